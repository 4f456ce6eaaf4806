// Package core holds the spec-independent contracts every part of gocoll
// shares: the numeric identifiers of dtypes, reduce ops and collectives, the
// byte-level Request a typed call turns into, the Backend interface the
// transports implement, the Store interface rendezvous goes through, and the
// errors collectives return.
//
// The identifiers are plain numbers so that a generated package made from a
// downstream spec (a subset of gocoll's, with the same ids) drives the same
// runtime. Generated packages register each dtype's name and size at init.
package core
