#include "vmm/version.hpp"

namespace pier {
const char* version() {
  return PIER_VERSION;
}
}  // namespace pier
