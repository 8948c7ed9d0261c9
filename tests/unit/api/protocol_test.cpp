// The API's request handling: parsing, validation, dispatch to the Target, error responses.
#include "vmm/api/protocol.hpp"

#include <gtest/gtest.h>

#include <random>

#include "unit/api/fake_target.hpp"

namespace pier::api {
namespace {

using testing::FakeTarget;

struct Fixture : ::testing::Test {
  FakeTarget target{4};
  RequestHandler handler{target};

  json call(std::string_view line) { return handler.handle_line(line); }
  // The error text of a failed request (fails the test if it succeeded).
  std::string error_of(std::string_view line) {
    const json r = call(line);
    EXPECT_EQ(r.value("ok", true), false) << line << " -> " << r.dump();
    EXPECT_TRUE(r.contains("error"));
    return r.value("error", "");
  }
};

TEST_F(Fixture, PortAddReturnsIdAndAddress) {
  const json r = call(R"({"cmd":"port-add","name":"org.pier.a","backend":"socket=/tmp/a"})");
  ASSERT_TRUE(r.value("ok", false)) << r.dump();
  EXPECT_EQ(r["result"]["id"], 0);
  EXPECT_EQ(r["result"]["name"], "org.pier.a");
  EXPECT_EQ(r["result"]["console"], false);
  EXPECT_EQ(r["result"]["address"], "addr-org.pier.a");
  const json r2 = call(R"({"cmd":"port-add","name":"org.pier.b","backend":"pty","console":true})");
  ASSERT_TRUE(r2.value("ok", false)) << r2.dump();
  EXPECT_EQ(r2["result"]["id"], 1);
  EXPECT_EQ(r2["result"]["console"], true);
  ASSERT_NE(target.find(1), nullptr);
  EXPECT_TRUE(target.find(1)->console);
}

TEST_F(Fixture, PortsListsEveryField) {
  call(R"({"cmd":"port-add","name":"a","backend":"null"})");
  target.find(0)->bytes_to_guest = 12;
  target.find(0)->guest_connected = true;
  target.find(0)->console_bytes_dropped = 3;
  target.find(0)->to_guest_wait = virtio::console::FlowWait::kNoGuestBuffers;
  const json r = call(R"({"cmd":"ports"})");
  ASSERT_TRUE(r.value("ok", false));
  const json& ports = r["result"]["ports"];
  ASSERT_EQ(ports.size(), 1u);
  for (const char* key : {"id", "name", "backend", "console", "host_connected", "guest_connected",
                          "bytes_to_guest", "bytes_from_guest", "bytes_to_host",
                          "console_bytes_dropped", "to_guest_wait", "to_host_wait"}) {
    EXPECT_TRUE(ports[0].contains(key)) << key;
  }
  EXPECT_EQ(ports[0]["bytes_to_guest"], 12);
  EXPECT_EQ(ports[0]["guest_connected"], true);
  EXPECT_EQ(ports[0]["console_bytes_dropped"], 3);
  EXPECT_EQ(ports[0]["to_guest_wait"], "no_guest_buffers");
}

TEST_F(Fixture, PortRemoveByNameOrIdAndIdReuse) {
  call(R"({"cmd":"port-add","name":"a","backend":"null"})");
  call(R"({"cmd":"port-add","name":"b","backend":"null"})");
  json r = call(R"({"cmd":"port-remove","name":"a"})");
  ASSERT_TRUE(r.value("ok", false)) << r.dump();
  EXPECT_EQ(r["result"]["id"], 0);
  r = call(R"({"cmd":"port-remove","id":1})");
  ASSERT_TRUE(r.value("ok", false)) << r.dump();
  EXPECT_EQ(r["result"]["name"], "b");
  EXPECT_TRUE(target.ports().empty());
  r = call(R"({"cmd":"port-add","name":"a","backend":"null"})");
  EXPECT_EQ(r["result"]["id"], 0);  // the id is reused
}

TEST_F(Fixture, RemovingAPortThatDoesNotExistIsAnError) {
  EXPECT_NE(error_of(R"({"cmd":"port-remove","name":"nope"})").find("no port named 'nope'"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"cmd":"port-remove","id":7})").find("no port 7"), std::string::npos);
  EXPECT_NE(error_of(R"({"cmd":"port-remove","id":-1})").find("no port"), std::string::npos);
  EXPECT_NE(error_of(R"({"cmd":"port-remove","id":99999999999})").find("no port"),
            std::string::npos);
  EXPECT_FALSE(error_of(R"({"cmd":"port-remove"})").empty());
  EXPECT_FALSE(error_of(R"({"cmd":"port-remove","id":1,"name":"a"})").empty());
  EXPECT_EQ(target.remove_calls, 0);
}

TEST_F(Fixture, DuplicateNameAndFullDeviceComeBackAsErrors) {
  call(R"({"cmd":"port-add","name":"a","backend":"null"})");
  EXPECT_NE(error_of(R"({"cmd":"port-add","name":"a","backend":"null"})").find("duplicate"),
            std::string::npos);
  for (int i = 1; i < 4; ++i) {
    const json r = call(fmt::format(R"({{"cmd":"port-add","name":"p{}","backend":"null"}})", i));
    ASSERT_TRUE(r.value("ok", false)) << r.dump();
  }
  EXPECT_NE(error_of(R"({"cmd":"port-add","name":"x","backend":"null"})").find("max-ports"),
            std::string::npos);
}

TEST_F(Fixture, MalformedJsonAndNonObjects) {
  EXPECT_NE(error_of("{").find("malformed JSON"), std::string::npos);
  EXPECT_NE(error_of("not json at all").find("malformed JSON"), std::string::npos);
  EXPECT_NE(error_of(std::string("{\"cmd\":\"ports\"\0}", 16)).find("malformed"),
            std::string::npos);
  EXPECT_NE(error_of("[1,2]").find("JSON object"), std::string::npos);
  EXPECT_NE(error_of("42").find("JSON object"), std::string::npos);
  EXPECT_NE(error_of("{}").find("no \"cmd\""), std::string::npos);
  EXPECT_NE(error_of(R"({"cmd":5})").find("must be a string"), std::string::npos);
}

TEST_F(Fixture, UnknownCommandAndFields) {
  EXPECT_NE(error_of(R"({"cmd":"reboot"})").find("unknown command 'reboot'"), std::string::npos);
  EXPECT_NE(error_of(R"({"cmd":"ports","verbose":true})").find("unknown field 'verbose'"),
            std::string::npos);
  EXPECT_NE(
      error_of(R"({"cmd":"port-add","nmae":"a","backend":"null"})").find("unknown field 'nmae'"),
      std::string::npos);
  EXPECT_EQ(target.add_calls, 0);
}

TEST_F(Fixture, MissingAndMistypedFields) {
  EXPECT_NE(error_of(R"({"cmd":"port-add","backend":"null"})").find("needs the field 'name'"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"cmd":"port-add","name":"a"})").find("needs the field 'backend'"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"cmd":"port-add","name":3,"backend":"null"})")
                .find("'name' of port-add must be a string, not an integer"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"cmd":"port-add","name":"a","backend":"null","console":"yes"})")
                .find("true or false"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"cmd":"port-remove","id":"3"})").find("port id"), std::string::npos);
  EXPECT_NE(error_of(R"({"cmd":"port-remove","id":1.5})").find("port id"), std::string::npos);
  EXPECT_FALSE(error_of(R"({"cmd":"port-add","name":"","backend":"null"})").empty());
  EXPECT_EQ(target.add_calls, 0);
}

TEST_F(Fixture, TargetErrorsBecomeErrorResponses) {
  EXPECT_NE(error_of(R"({"cmd":"port-add","name":"a","backend":"bogus"})").find("bogus"),
            std::string::npos);
}

TEST_F(Fixture, TagIsEchoedOnSuccessAndError) {
  json r = call(R"({"cmd":"vm-status","tag":17})");
  EXPECT_TRUE(r.value("ok", false));
  EXPECT_EQ(r["tag"], 17);
  r = call(R"({"cmd":"nope","tag":"x"})");
  EXPECT_FALSE(r.value("ok", true));
  EXPECT_EQ(r["tag"], "x");
}

TEST_F(Fixture, QuitCallsTheTarget) {
  const json r = call(R"({"cmd":"quit"})");
  EXPECT_TRUE(r.value("ok", false));
  EXPECT_EQ(target.quit_calls, 1);
}

TEST_F(Fixture, RandomGarbageAlwaysGetsOneWellFormedResponse) {
  std::mt19937 rng(7);
  for (int i = 0; i < 5000; ++i) {
    std::string line(rng() % 64, '\0');
    for (auto& c : line) c = static_cast<char>(rng() % 256);
    if (i % 3 == 0) line = R"({"cmd":"port-add","name":)" + line;
    const json r = call(line);
    ASSERT_TRUE(r.is_object());
    const std::string out = dump_line(r);  // never throws, even on invalid UTF-8 echoed back
    EXPECT_EQ(out.find('\n'), std::string::npos);
    EXPECT_TRUE(json::parse(out).contains("ok"));
  }
}

TEST(ApiEvents, EventJsonCarriesKindPortAndTimestamp) {
  virtio::console::PortEvent e{virtio::console::PortEvent::Kind::kGuestOpened, 3, "org.x"};
  const auto when = std::chrono::system_clock::time_point(std::chrono::microseconds(1234567890));
  const json j = event_json(e, when);
  EXPECT_EQ(j["event"], "guest-opened");
  EXPECT_EQ(j["port"]["id"], 3);
  EXPECT_EQ(j["port"]["name"], "org.x");
  EXPECT_EQ(j["timestamp"]["seconds"], 1234);
  EXPECT_EQ(j["timestamp"]["microseconds"], 567890);
  EXPECT_NE(format_event(j).find("guest-opened port 3 'org.x'"), std::string::npos);
  const json s = vm_stopped_json("quit", when);
  EXPECT_EQ(s["event"], "vm-stopped");
  EXPECT_NE(format_event(s).find("vm-stopped (quit)"), std::string::npos);
  const json h = guest_halted_json("vCPU 0 rip=0x200123", when);
  EXPECT_EQ(h["event"], "guest-halted");
  EXPECT_EQ(h["vcpus"], "vCPU 0 rip=0x200123");
  EXPECT_EQ(h["timestamp"]["seconds"], 1234);
  EXPECT_NE(format_event(h).find("guest-halted: every vCPU halted with interrupts off (vCPU 0"),
            std::string::npos);
}

TEST(ApiFormat, HumanReadableResults) {
  json ports = {{"ports", json::array({{{"id", 1},
                                        {"name", "org.a"},
                                        {"console", false},
                                        {"host_connected", true},
                                        {"guest_connected", false},
                                        {"bytes_to_guest", 5},
                                        {"bytes_from_guest", 6},
                                        {"console_bytes_dropped", 0},
                                        {"backend", "pty /dev/pts/3"}}})}};
  const std::string table = format_result("ports", ports);
  EXPECT_NE(table.find("org.a"), std::string::npos);
  EXPECT_NE(table.find("pty /dev/pts/3"), std::string::npos);
  EXPECT_EQ(format_result("port-remove", {{"id", 2}, {"name", "b"}}), "port 2 'b' removed\n");
}

}  // namespace
}  // namespace pier::api
