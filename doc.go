// Package gocoll is a toolkit for collective communication between CPU
// processes: allreduce, broadcast, allgather, reduce-scatter, barrier and the
// rest, over shared memory inside a node and TCP between nodes.
//
// Start with package dispatch (Init returns a communicator) and the typed
// API in generated/coll. The spec in spec/collectives.yaml drives the typed
// API, the SIMD reduction kernels and the conformance tests; regenerate with
// go generate after editing it.
package gocoll

//go:generate go run -C cmd/gentool . -spec ../../spec/collectives.yaml -out ../../generated
//go:generate go run -C gen ./cmd/halfasm -dir ../half
