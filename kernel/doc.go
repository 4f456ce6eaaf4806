// Package kernel is the spec-independent half of gocoll's reduction
// kernels: the signature every kernel has, the instruction-set levels they
// come in, the choice of level by CPU features (or GOCOLL_ISA), and the
// plumbing that hands a kernel its input pointers without allocating.
//
// The kernels themselves are generated from a spec (AVX-512 and AVX2
// assembly, pure Go for every other CPU) into a package that registers one
// Impl per dtype x op with package core. Backends never name a kernel: they
// reduce through the core.Kernel a checked core.Request carries.
//
// Numerics every generated level shares bit for bit: inputs are folded
// left to right, each read once, dst written once, no FMA; 16-bit floats
// are widened to float32, accumulated there across all inputs and rounded
// once to nearest even; min and max order -0 below +0 and let NaN win;
// integers wrap as Go's do.
package kernel
