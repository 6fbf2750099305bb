//! octet-kernels: reference kernels (the spec), fast CPU kernels, and the backend boundary.
