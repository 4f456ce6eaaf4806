// Package core is the contract every part of gocoll shares, and the only
// package the backends need besides package kernel:
//
//   - Descriptors. A dtype is a *Type (id, name, size, class, float
//     layout) and a reduce op an *OpInfo; a *Kernel joins the two with the
//     kernels that reduce them at each instruction-set level. Generated
//     packages register theirs at init (RegisterType, RegisterOp,
//     RegisterKernel) in a lock-free table indexed by id, so a downstream
//     spec adds dtypes and ops that every backend then moves and reduces
//     without knowing of them.
//   - The collectives. They are the runtime's algorithms, not a spec's:
//     Kind names them and Kind.Shape says what each does with a Request's
//     fields. A spec picks a subset.
//   - Request, and Check, the one check of a request: everything a rank
//     can tell about its own call alone, run once at the communicator
//     boundary, which also resolves the request's descriptors.
//   - Backend, what a transport implements, and Guard, the communicator
//     boundary that drives it: one call at a time, a refused call made
//     known to the peers, the failed and closed states, one default
//     timeout; and calls started without blocking (Starter, Handle), run
//     in the order issued by the caller's Wait or a progress goroutine.
//   - Store, the rendezvous key-value store, and the errors collectives
//     return: MismatchError when ranks disagree, PeerError when a rank did
//     not take part, and the sentinels a rank's own bad argument wraps.
package core
