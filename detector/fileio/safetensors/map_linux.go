package safetensors

import "syscall"

// mapPopulate asks Linux to map every page up front (one pass in the kernel
// instead of a fault per page).
const mapPopulate = syscall.MAP_POPULATE
