#include "vmm/options.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include "vmm/error.hpp"

namespace pier {
namespace {

TEST(ParseSize, UnitsAndDefaults) {
  EXPECT_EQ(parse_size("512M"), 512ull << 20);
  EXPECT_EQ(parse_size("512"), 512ull << 20);
  EXPECT_EQ(parse_size("2G"), 2ull << 30);
  EXPECT_EQ(parse_size("2GiB"), 2ull << 30);
  EXPECT_EQ(parse_size("2GB"), 2ull << 30);
  EXPECT_EQ(parse_size("65536K"), 64ull << 20);
  EXPECT_EQ(parse_size("1t"), 1ull << 40);
}

TEST(ParseSize, MalformedSizesThrow) {
  for (const char* bad :
       {"", "M", "12X", "1.5G", "-1G", "12 M", "99999999999999999999G", "20000000000T", "5GiBs"}) {
    EXPECT_THROW(parse_size(bad), Error) << bad;
  }
}

TEST(RunOptions, GuestCommandGoesAfterDashesOnTheCmdline) {
  auto o = parse_run_options({"--kernel", "/k", "--cmdline", "console=ttyS0", "--", "echo", "hi"});
  EXPECT_EQ(o.machine.cmdline, "console=ttyS0 -- echo hi");
  EXPECT_EQ(o.machine.kernel_path, "/k");
}

TEST(RunOptions, DefaultsAndLimits) {
  auto o = parse_run_options({"--kernel", "/k"});
  EXPECT_EQ(o.machine.memory_bytes, 512ull << 20);
  EXPECT_EQ(o.machine.cpus, 1u);
  EXPECT_EQ(o.machine.serial, "stdio");
  EXPECT_EQ(o.machine.cmdline, default_linux_cmdline());
  EXPECT_THROW(parse_run_options({"--kernel", "/k", "--memory", "32M"}), Error);
  EXPECT_THROW(parse_run_options({"--kernel", "/k", "--memory", "1T"}), Error);
  EXPECT_THROW(parse_run_options({"--kernel", "/k", "--memory", "lots"}), Error);
  EXPECT_THROW(parse_run_options({"--kernel", "/k", "--cpus", "0"}), Error);
  EXPECT_THROW(parse_run_options({"--kernel", "/k", "--cpus", "two"}), Error);
  EXPECT_THROW(parse_run_options({"--kernel", "/k", "--frobnicate"}), Error);
  EXPECT_THROW(parse_run_options({"--kernel", "/k", "--boot-method", "uefi"}), Error);
  EXPECT_THROW(parse_run_options({"--kernel", "/k", "--host-profile", "tcg"}), Error);
}

TEST(RunOptions, HelpIsNotAnError) {
  auto o = parse_run_options({"--help"});
  EXPECT_TRUE(o.show_help);
  EXPECT_NE(o.help_text.find("--kernel"), std::string::npos);
  EXPECT_NE(o.help_text.find("Ctrl-A x"), std::string::npos);
}

}  // namespace
}  // namespace pier

namespace pier {
namespace {

TEST(PortOptions, NameBackendAndConsoleFlag) {
  auto p = parse_port_option("name=org.pier.agent,socket=/tmp/a.sock,client,reconnect=2");
  EXPECT_EQ(p.name, "org.pier.agent");
  EXPECT_EQ(p.backend, "socket=/tmp/a.sock,client,reconnect=2");
  EXPECT_FALSE(p.console);
  p = parse_port_option("name=log,pty,console");
  EXPECT_EQ(p.backend, "pty");
  EXPECT_TRUE(p.console);
  p = parse_port_option("socket=/x,name=late");  // name may come anywhere
  EXPECT_EQ(p.name, "late");
  EXPECT_EQ(p.backend, "socket=/x");
}

TEST(PortOptions, BadPortsAreRejected) {
  EXPECT_THROW(parse_port_option("socket=/tmp/a"), Error);  // no name
  EXPECT_THROW(parse_port_option("name=,pty"), Error);      // empty name
  EXPECT_THROW(parse_port_option("name=a/b,pty"), Error);   // slash
  EXPECT_THROW(parse_port_option("name=a b,pty"), Error);   // space
  EXPECT_THROW(parse_port_option("name=" + std::string(201, 'x') + ",pty"), Error);
  EXPECT_THROW(parse_port_option("name=ok"), Error);  // no backend
  EXPECT_TRUE(valid_port_name("org.qemu.guest_agent.0"));
  EXPECT_FALSE(valid_port_name(".."));
}

TEST(PortOptions, PortsConsoleAndStdioDefaults) {
  auto o = parse_run_options({"--kernel", "/k", "--port", "name=a,null", "--port", "name=b,pty"});
  ASSERT_EQ(o.machine.ports.size(), 3u);
  EXPECT_TRUE(o.machine.ports[0].console);
  EXPECT_EQ(o.machine.ports[0].backend, "null");
  EXPECT_EQ(o.machine.ports[2].name, "b");
  EXPECT_EQ(o.machine.serial, "stdio");

  o = parse_run_options({"--kernel", "/k", "--console", "stdio"});
  EXPECT_EQ(o.machine.serial, "null");
  EXPECT_NE(o.machine.cmdline.find("console=hvc0"), std::string::npos);
  EXPECT_EQ(o.machine.ports.size(), 1u);

  o = parse_run_options({"--kernel", "/k"});
  EXPECT_TRUE(o.machine.ports.empty());

  EXPECT_THROW(
      parse_run_options({"--kernel", "/k", "--port", "name=a,null", "--port", "name=a,pty"}),
      Error);
  EXPECT_THROW(parse_run_options({"--kernel", "/k", "--console", "stdio", "--serial", "stdio"}),
               Error);
  EXPECT_THROW(parse_run_options({"--kernel", "/k", "--port", "name=a,stdio"}), Error);
  EXPECT_THROW(parse_run_options({"--kernel", "/k", "--max-ports", "2", "--port", "name=a,null",
                                  "--port", "name=b,null"}),
               Error);
  EXPECT_THROW(parse_run_options({"--kernel", "/k", "--max-ports", "512"}), Error);
  EXPECT_THROW(parse_run_options({"--kernel", "/k", "--max-ports", "0"}), Error);
}

TEST(PortOptions, ResizeOrderAndConsoleRing) {
  auto o = parse_run_options({"--kernel", "/k"});
  EXPECT_FALSE(o.machine.resize_cols_first);  // Debian 12's 6.1 reads rows first
  EXPECT_EQ(o.machine.console_ring_bytes, 64u * 1024);
  o = parse_run_options({"--kernel", "/k", "--resize-order", "cols-rows", "--console-ring", "1M"});
  EXPECT_TRUE(o.machine.resize_cols_first);
  EXPECT_EQ(o.machine.console_ring_bytes, 1u << 20);
  o = parse_run_options({"--kernel", "/k", "--console-ring", "0"});
  EXPECT_EQ(o.machine.console_ring_bytes, 0u);
  EXPECT_THROW(parse_run_options({"--kernel", "/k", "--resize-order", "cols"}), Error);
  EXPECT_THROW(parse_run_options({"--kernel", "/k", "--console-ring", "65M"}), Error);
  EXPECT_THROW(parse_run_options({"--kernel", "/k", "--console-ring", "lots"}), Error);
}

// A config file in /tmp with `text`; removed by the destructor.
struct ConfigFile {
  explicit ConfigFile(const std::string& text)
      : path("/tmp/pier-options-test-" + std::to_string(::getpid()) + ".conf") {
    FILE* f = std::fopen(path.c_str(), "w");
    std::fputs(text.c_str(), f);
    std::fclose(f);
  }
  ~ConfigFile() { ::unlink(path.c_str()); }
  std::string path;
};

TEST(ConfigFile, EquivalentToFlags) {
  ConfigFile conf(
      "# comment\n"
      "kernel = /k\n"
      "memory = 1G\n"
      "cpus = 2\n"
      "console = socket=/tmp/c.sock\n"
      "port = name=org.a,socket=/tmp/a.sock\n"
      "port = name=org.b,pty,console\n"
      "max-ports = 8\n"
      "api-socket = /tmp/api.sock\n"
      "rng = false\n");
  const auto from_file = parse_run_options({"--config", conf.path});
  const auto from_flags = parse_run_options(
      {"--kernel", "/k", "--memory", "1G", "--cpus", "2", "--console", "socket=/tmp/c.sock",
       "--port", "name=org.a,socket=/tmp/a.sock", "--port", "name=org.b,pty,console", "--max-ports",
       "8", "--api-socket", "/tmp/api.sock", "--rng", "false"});
  for (const auto* o : {&from_file, &from_flags}) {
    EXPECT_EQ(o->machine.kernel_path, "/k");
    EXPECT_EQ(o->machine.memory_bytes, 1ull << 30);
    EXPECT_EQ(o->machine.cpus, 2u);
    EXPECT_EQ(o->machine.max_ports, 8u);
    EXPECT_EQ(o->machine.api_socket, "/tmp/api.sock");
    EXPECT_FALSE(o->machine.rng);
    ASSERT_EQ(o->machine.ports.size(), 3u);
    EXPECT_EQ(o->machine.ports[0].backend, "socket=/tmp/c.sock");
    EXPECT_EQ(o->machine.ports[1].name, "org.a");
    EXPECT_EQ(o->machine.ports[2].name, "org.b");
    EXPECT_TRUE(o->machine.ports[2].console);
  }
}

TEST(ConfigFile, FlagsOverrideTheFile) {
  ConfigFile conf(
      "kernel = /k\n"
      "memory = 1G\n"
      "port = name=org.file1,null\n"
      "port = name=org.file2,null\n");
  auto o = parse_run_options({"--config", conf.path, "--memory", "256M"});
  EXPECT_EQ(o.machine.memory_bytes, 256ull << 20);
  ASSERT_EQ(o.machine.ports.size(), 3u);  // port 0 + the file's two
  o = parse_run_options({"--memory", "128M", "--config", conf.path, "--port", "name=org.cli,null"});
  EXPECT_EQ(o.machine.memory_bytes, 128ull << 20);
  ASSERT_EQ(o.machine.ports.size(), 2u);  // the command line's ports replace the file's
  EXPECT_EQ(o.machine.ports[1].name, "org.cli");
}

TEST(ConfigFile, ErrorsNameTheFile) {
  ConfigFile conf("kernel = /k\nmemroy = 1G\n");
  try {
    parse_run_options({"--config", conf.path});
    FAIL() << "an unknown option in the file must be an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("memroy"), std::string::npos) << e.what();
  }
  EXPECT_THROW(parse_run_options({"--config", "/nonexistent/vm.conf"}), Error);
  ConfigFile bad_port("kernel = /k\nport = name=x\n");
  EXPECT_THROW(parse_run_options({"--config", bad_port.path}), Error);
}

TEST(ConfigFile, OnlyARegularFileOfAtMostOneMebibyte) {
  // /dev/zero would be read forever; a directory or a fifo is not a config file either.
  for (const char* not_a_file : {"/dev/zero", "/tmp"}) {
    try {
      parse_run_options({"--config", not_a_file});
      FAIL() << not_a_file << " must be refused";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("not a regular file"), std::string::npos) << e.what();
    }
  }
  ConfigFile big(std::string(1 << 20, '#') + "\n");
  try {
    parse_run_options({"--config", big.path});
    FAIL() << "a config file over 1 MiB must be refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("larger than 1 MiB"), std::string::npos) << e.what();
  }
}

TEST(RunOptions, ApiSocketImpliesTheConsoleDevice) {
  const auto o = parse_run_options({"--kernel", "/k", "--api-socket", "/tmp/x.sock"});
  EXPECT_EQ(o.machine.api_socket, "/tmp/x.sock");
  ASSERT_EQ(o.machine.ports.size(), 1u);  // port 0, a null console, so ports can be added
  EXPECT_TRUE(o.machine.ports[0].console);
  EXPECT_EQ(o.machine.ports[0].backend, "null");
}

}  // namespace
TEST(RunOptions, SeccompIsOnByDefaultAndSettableByFlagOrFile) {
  EXPECT_EQ(parse_run_options({"--kernel", "/k"}).machine.seccomp, seccomp::Mode::kOn);
  EXPECT_EQ(parse_run_options({"--kernel", "/k", "--seccomp", "off"}).machine.seccomp,
            seccomp::Mode::kOff);
  EXPECT_EQ(parse_run_options({"--kernel", "/k", "--seccomp", "log"}).machine.seccomp,
            seccomp::Mode::kLog);
  EXPECT_EQ(parse_run_options({"--kernel", "/k", "--seccomp", "on"}).machine.seccomp,
            seccomp::Mode::kOn);
  try {
    parse_run_options({"--kernel", "/k", "--seccomp", "maybe"});
    FAIL() << "--seccomp maybe must be refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("on, off or log"), std::string::npos) << e.what();
  }
  ConfigFile conf("kernel = /k\nseccomp = off\n");
  EXPECT_EQ(parse_run_options({"--config", conf.path}).machine.seccomp, seccomp::Mode::kOff);
  // The command line wins over the file.
  EXPECT_EQ(parse_run_options({"--config", conf.path, "--seccomp", "log"}).machine.seccomp,
            seccomp::Mode::kLog);
  EXPECT_NE(parse_run_options({"--help"}).help_text.find("--seccomp"), std::string::npos);
}

TEST(RunOptions, JailNeedsUidAndGidAndTakesAFileSizeLimit) {
  EXPECT_FALSE(parse_run_options({"--kernel", "/k"}).jail);
  const auto o = parse_run_options(
      {"--kernel", "/k", "--jail", "/srv/j", "--jail-uid", "10000", "--jail-gid", "10001"});
  ASSERT_TRUE(o.jail);
  EXPECT_EQ(o.jail->dir, "/srv/j");
  EXPECT_EQ(o.jail->uid, 10000u);
  EXPECT_EQ(o.jail->gid, 10001u);
  EXPECT_EQ(o.jail->file_size_limit, 1ull << 30);  // the default
  EXPECT_EQ(parse_run_options({"--kernel", "/k", "--jail", "/j", "--jail-uid", "1", "--jail-gid",
                               "1", "--jail-fsize", "64M"})
                .jail->file_size_limit,
            64ull << 20);
  EXPECT_EQ(parse_run_options({"--kernel", "/k", "--jail", "/j", "--jail-uid", "1", "--jail-gid",
                               "1", "--jail-fsize", "unlimited"})
                .jail->file_size_limit,
            UINT64_MAX);
  EXPECT_THROW(parse_run_options({"--kernel", "/k", "--jail", "/j", "--jail-uid", "1"}), Error);
  EXPECT_THROW(parse_run_options({"--kernel", "/k", "--jail", "/j", "--jail-gid", "1"}), Error);
  EXPECT_THROW(parse_run_options({"--kernel", "/k", "--jail-uid", "1", "--jail-gid", "1"}), Error);
  EXPECT_THROW(parse_run_options({"--kernel", "/k", "--jail-fsize", "1G"}), Error);
  EXPECT_THROW(parse_run_options({"--kernel", "/k", "--jail", "/j", "--jail-uid", "1", "--jail-gid",
                                  "1", "--jail-fsize", "lots"}),
               Error);
  ConfigFile conf("kernel = /k\njail = /srv/j\njail-uid = 7\njail-gid = 8\n");
  const auto f = parse_run_options({"--config", conf.path});
  ASSERT_TRUE(f.jail);
  EXPECT_EQ(f.jail->dir, "/srv/j");
  EXPECT_EQ(f.jail->uid, 7u);
  EXPECT_EQ(f.jail->gid, 8u);
}

}  // namespace pier
