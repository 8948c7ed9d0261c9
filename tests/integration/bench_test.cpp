// `pier bench` end to end in its quick mode (tiny sizes, one run, the bare guest): it must boot
// the guests, move the data, and write a CSV with every point of the matrix. Timings are printed
// by the tool but never asserted here.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "integration/pier_process.hpp"

namespace pier::test {
namespace {

namespace fs = std::filesystem;

struct CsvRow {
  std::map<std::string, std::string> f;
  double num(const std::string& k) const { return std::stod(f.at(k)); }
};

std::vector<std::string> split(const std::string& line) {
  std::vector<std::string> out;
  std::stringstream ss(line);
  std::string cell;
  while (std::getline(ss, cell, ',')) out.push_back(cell);
  if (!line.empty() && line.back() == ',') out.emplace_back();
  return out;
}

// Parses the CSV strictly: the documented header, the same number of cells on every row.
std::vector<CsvRow> read_csv(const fs::path& path) {
  std::ifstream in(path);
  std::string line;
  EXPECT_TRUE(std::getline(in, line)) << path;
  if (!line.empty() && line.back() == '\r') line.pop_back();
  const auto header = split(line);
  EXPECT_EQ(line, "system,engine,test,direction,size,ports,unit,runs,min,median,max");
  std::vector<CsvRow> rows;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    const auto cells = split(line);
    EXPECT_EQ(cells.size(), header.size()) << line;
    if (cells.size() != header.size()) continue;
    CsvRow r;
    for (size_t i = 0; i < cells.size(); ++i) r.f[header[i]] = cells[i];
    rows.push_back(r);
  }
  return rows;
}

class PierBench : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("pier-bench-test-" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

bool on_path(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::stringstream ss(path ? path : "");
  std::string d;
  while (std::getline(ss, d, ':')) {
    if (!d.empty() && ::access((fs::path(d) / name).c_str(), X_OK) == 0) return true;
  }
  return false;
}

TEST_F(PierBench, QuickBareRunWritesEveryPointToAParsableCsv) {
  PIER_REQUIRE_KVM();
  const fs::path csv = dir_ / "bench.csv";
  const fs::path png = dir_ / "bench.png";
  const bool plot = on_path("gnuplot");
  PierRun run;
  run.args = {"bench",     "--guest", "bare",  "--quick",   "--no-progress",
              "--compare", "ceiling", "--csv", csv.string()};
  if (plot) run.args.insert(run.args.end(), {"--plot", png.string()});
  run.timeout = std::chrono::milliseconds(300000);
  const PierResult r = run_pier(run);
  ASSERT_EQ(r.exit_code, 0) << r.describe();
  EXPECT_NE(r.out.find("pier min/median/max"), std::string::npos) << r.describe();

  const auto rows = read_csv(csv);
  std::set<std::string> pier_points, ceiling_points;
  for (const auto& row : rows) {
    const std::string key = row.f.at("test") + "/" + row.f.at("direction") + "/" +
                            row.f.at("size") + "/" + row.f.at("ports");
    EXPECT_EQ(row.f.at("runs"), "1") << key;
    EXPECT_LE(row.num("min"), row.num("median")) << key;
    EXPECT_LE(row.num("median"), row.num("max")) << key;
    // CPU time is counted in clock ticks: a quick run may round to 0.
    if (row.f.at("test") != "cpu_per_gib") {
      EXPECT_GT(row.num("min"), 0) << key;
    }
    if (row.f.at("system") == "pier") pier_points.insert(key);
    if (row.f.at("system") == "ceiling") ceiling_points.insert(key);
  }
  // --quick: guest writes 64 B and 4 KiB, host writes 4 KiB and 64 KiB, 1 and 2 ports,
  // 1-byte ping-pong, boot time, CPU per GiB.
  const std::set<std::string> expected = {
      "throughput/g2h/64/1",    "throughput/g2h/4096/1", "throughput/h2g/4096/1",
      "throughput/h2g/65536/1", "throughput/g2h/4096/2", "throughput/h2g/65536/2",
      "latency_p50/rtt/1/1",    "latency_p99/rtt/1/1",   "boot/-/0/1",
      "cpu_per_gib/g2h/0/0",    "cpu_per_gib/h2g/0/0"};
  EXPECT_EQ(pier_points, expected) << r.describe();
  EXPECT_EQ(ceiling_points.size(), 6u) << r.describe();
  if (plot) {
    std::ifstream in(png, std::ios::binary);
    char magic[8] = {};
    in.read(magic, sizeof magic);
    EXPECT_EQ(std::string(magic + 1, 3), "PNG") << r.describe();
  }
}

// The same quick matrix beside QEMU (with KVM, or TCG where QEMU cannot use KVM here): QEMU's
// rows appear, or the output says why QEMU could not run.
TEST_F(PierBench, QuickBareRunBesideQemu) {
  PIER_REQUIRE_KVM();
  if (!on_path("qemu-system-x86_64")) GTEST_SKIP() << "qemu-system-x86_64 not installed";
  const fs::path csv = dir_ / "bench.csv";
  PierRun run;
  run.args = {"bench",     "--guest", "bare",        "--quick", "--no-progress",
              "--compare", "qemu",    "--allow-tcg", "--csv",   csv.string()};
  run.timeout = std::chrono::milliseconds(900000);
  const PierResult r = run_pier(run);
  ASSERT_EQ(r.exit_code, 0) << r.describe();
  size_t qemu_rows = 0;
  for (const auto& row : read_csv(csv)) {
    if (row.f.at("system").starts_with("qemu")) {
      ++qemu_rows;
      if (row.f.at("test") != "cpu_per_gib") {
        EXPECT_GT(row.num("min"), 0) << row.f.at("test");
      }
    }
  }
  if (qemu_rows == 0) {
    const bool said_why = r.out.find("could not run here") != std::string::npos ||
                          r.out.find("cannot run the guest here") != std::string::npos;
    EXPECT_TRUE(said_why) << r.describe();
  } else {
    EXPECT_EQ(qemu_rows, 11u) << r.describe();
  }
}

}  // namespace
}  // namespace pier::test
