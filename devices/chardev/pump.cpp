#include "devices/chardev/pump.hpp"

#include <array>

#include "vmm/log.hpp"

namespace pier::chardev {

Pump::Pump(std::unique_ptr<Backend> backend, EventLoop& loop, size_t soft_limit, size_t hard_limit)
    : backend_(std::move(backend)), loop_(loop), soft_limit_(soft_limit), hard_limit_(hard_limit) {}

Pump::~Pump() {
  // Flush what we can without blocking; then detach from the loop.
  std::lock_guard lock(mutex_);
  flush_locked();
  if (input_registered_) loop_.remove(backend_->input_fd());
  if (output_registered_) loop_.remove(backend_->output_fd());
}

void Pump::write(std::span<const uint8_t> data) {
  std::lock_guard lock(mutex_);
  if (out_.empty()) {
    // Fast path: straight to the backend from the caller's thread (it never blocks).
    const size_t n = backend_->write(data);
    data = data.subspan(n);
    if (data.empty()) return;
  }
  const size_t room = hard_limit_ > out_.size() ? hard_limit_ - out_.size() : 0;
  if (data.size() > room) {
    dropped_ += data.size() - room;
    static log::OnceFlag once;
    if (once.first()) log::warn("{}: output buffer full, dropping bytes", backend_->describe());
    data = data.first(room);
  }
  out_.insert(out_.end(), data.begin(), data.end());
  if (out_.size() >= soft_limit_) was_full_ = true;
  if (!watching_output_ && backend_->output_fd() >= 0) {
    watching_output_ = true;
    if (!output_registered_) {
      output_registered_ =
          loop_.add(backend_->output_fd(), EPOLLOUT, [this](uint32_t) { on_output_ready(); });
      // A regular file never reports EAGAIN; anything left is retried on the next write.
      if (!output_registered_) watching_output_ = false;
    } else {
      loop_.modify(backend_->output_fd(), EPOLLOUT);
    }
  }
}

void Pump::flush_locked() {
  while (!out_.empty()) {
    // deque storage is segmented: write the contiguous run at the front.
    std::array<uint8_t, 16384> chunk;
    const size_t n = std::min(chunk.size(), out_.size());
    std::copy_n(out_.begin(), n, chunk.begin());
    const size_t written = backend_->write(std::span(chunk.data(), n));
    out_.erase(out_.begin(), out_.begin() + static_cast<std::ptrdiff_t>(written));
    if (written < n) break;
  }
}

void Pump::on_output_ready() {
  std::function<void()> notify;
  {
    std::lock_guard lock(mutex_);
    flush_locked();
    if (out_.empty() && watching_output_) {
      watching_output_ = false;
      loop_.modify(backend_->output_fd(), 0);
    }
    if (was_full_ && out_.size() < soft_limit_) {
      was_full_ = false;
      notify = on_space_;
    }
  }
  if (notify) notify();
}

size_t Pump::pending_bytes() const {
  std::lock_guard lock(mutex_);
  return out_.size();
}

bool Pump::has_space() const {
  std::lock_guard lock(mutex_);
  return out_.size() < soft_limit_;
}

uint64_t Pump::dropped_bytes() const {
  std::lock_guard lock(mutex_);
  return dropped_;
}

uint64_t Pump::bytes_lost() const {
  return backend_->bytes_lost();  // atomic in the backend: no lock needed
}

void Pump::set_on_space(std::function<void()> fn) {
  std::lock_guard lock(mutex_);
  on_space_ = std::move(fn);
}

void Pump::set_input_handler(std::function<size_t(std::span<const uint8_t>)> consume) {
  consume_ = std::move(consume);
  const int fd = backend_->input_fd();
  if (fd >= 0 && !input_registered_) {
    input_registered_ = loop_.add(fd, EPOLLIN, [this](uint32_t) { on_input_ready(); });
    if (!input_registered_) {
      input_always_ready_ = true;
      schedule_file_input();
    }
  }
}

void Pump::schedule_file_input() {
  loop_.post([this] {
    if (!input_paused_ && !input_done_) on_input_ready();
  });
}

void Pump::on_input_ready() {
  std::array<uint8_t, 4096> buf;
  const ssize_t n = backend_->read(buf);
  if (n < 0) {
    // End of input (stdin closed): stop reading it; output continues.
    input_done_ = true;
    if (input_registered_) loop_.modify(backend_->input_fd(), 0);
    return;
  }
  if (n > 0) {
    held_input_.insert(held_input_.end(), buf.begin(), buf.begin() + n);
    deliver_held_input();
  }
  if (input_always_ready_ && !input_paused_) schedule_file_input();
}

void Pump::deliver_held_input() {
  if (!held_input_.empty() && consume_) {
    const size_t taken = consume_(held_input_);
    held_input_.erase(held_input_.begin(),
                      held_input_.begin() + static_cast<std::ptrdiff_t>(taken));
  }
  const bool pause = !held_input_.empty();
  if (pause != input_paused_) {
    input_paused_ = pause;
    if (input_registered_) {
      loop_.modify(backend_->input_fd(), pause ? 0u : uint32_t{EPOLLIN});
    } else if (!pause && input_always_ready_) {
      schedule_file_input();
    }
  }
}

void Pump::resume_input() {
  // Called from a vCPU thread when the device has room again: hand over on the I/O thread.
  loop_.post([this] {
    if (input_paused_) deliver_held_input();
  });
}

}  // namespace pier::chardev
