#pragma once
namespace pier {
const char* version();
}  // namespace pier
