package core

import "fmt"

// CountsEdgeSum is rank's share of alltoallv's counts check. Every pair
// (i, j) of ranks adds a hash of (i, j, sendCounts[j]) on rank i and
// subtracts a hash of (i, j, recvCounts[i]) on rank j, so the shares of
// all ranks sum to 0 (mod 2^64) when every rank's send counts are what
// their receivers expect, and to 0 only by a 2^-64 accident otherwise:
// backends compare one sum instead of the whole counts matrix.
func CountsEdgeSum(rank int, sendCounts, recvCounts []int) uint64 {
	var s uint64
	for j, c := range sendCounts {
		s += edgeHash(rank, j, c)
	}
	for i, c := range recvCounts {
		s -= edgeHash(i, rank, c)
	}
	return s
}

// edgeHash hashes the count of the block rank i sends rank j: splitmix64's
// finaliser over an odd-multiplier combination of the three, one mix per
// pair because every rank hashes 2n pairs per call.
func edgeHash(i, j, c int) uint64 {
	return mix64(uint64(i)*0x9e3779b97f4a7c15 + uint64(j)*0xc2b2ae3d27d4eb4f + uint64(c)*0x165667b19e3779f9)
}

func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// SharedCountsMismatch is the error of a vector collective whose ranks
// passed different counts vectors (counts[r] is rank r's), or nil if they
// agree. Every rank derives it from the same table, so all name the same
// culprit: the vector most ranks passed (on a tie, the lowest rank's) is
// the reference, the lowest rank that passed another is the culprit; it
// names the lowest rank holding the reference, the others name it.
func SharedCountsMismatch(seq uint64, rank int, counts [][]int) *MismatchError {
	same := func(a, b []int) bool {
		if len(a) != len(b) {
			return false
		}
		for i := range a {
			if a[i] != b[i] {
				return false
			}
		}
		return true
	}
	ref, best := 0, 0
	for i := range counts {
		c := 0
		for j := range counts {
			if same(counts[i], counts[j]) {
				c++
			}
		}
		if c > best {
			ref, best = i, c
		}
	}
	if best == len(counts) {
		return nil
	}
	peer := ref
	if same(counts[rank], counts[ref]) {
		for i := range counts {
			if !same(counts[i], counts[ref]) {
				peer = i
				break
			}
		}
	}
	return &MismatchError{Seq: seq, Field: "counts", Rank: rank, Mine: CountsText(counts[rank]), Peer: peer, Theirs: CountsText(counts[peer])}
}

// PairCountsMismatch is the error of an alltoallv whose counts disagree
// (send[i] and recv[i] are rank i's send and receive counts), or nil if
// every rank sends each peer what that peer expects. Every rank derives
// it from the same table: the first pair (sender i, receiver j) in rank
// order whose counts differ. The two ranks name each other; the others
// name the sender.
func PairCountsMismatch(seq uint64, rank int, send, recv [][]int) *MismatchError {
	for i := range send {
		for j := range recv {
			s, r := send[i][j], recv[j][i]
			if s == r {
				continue
			}
			sent := fmt.Sprintf("sendCounts[%d] = %d", j, s)
			want := fmt.Sprintf("recvCounts[%d] = %d", i, r)
			e := &MismatchError{Seq: seq, Field: "counts", Rank: rank, Peer: i, Theirs: sent}
			switch rank {
			case i:
				e.Mine, e.Peer, e.Theirs = sent, j, want
			case j:
				e.Mine = want
			default:
				e.Mine = fmt.Sprintf("counts that agree with its peers' (rank %d expects %s)", j, want)
			}
			return e
		}
	}
	return nil
}
