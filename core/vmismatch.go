package core

import (
	"fmt"
	"sync/atomic"
)

// CountsEdgeSum is rank's share of alltoallv's counts check. The block
// rank i sends rank j weighs its count with a key of the pair, K(i, j), a
// pseudo-random odd number: rank i adds sendCounts[j]*K(i, j) and rank j
// subtracts recvCounts[i]*K(i, j). The shares of all ranks sum to 0 (mod
// 2^64) when every rank sends each peer what that peer expects, and to 0
// otherwise only by a 2^-64 accident (one pair that differs by d adds
// d*K, never 0 mod 2^64 for an odd K): backends compare one sum instead
// of the whole counts matrix. The keys of this rank's row and column are
// computed once per rank and size.
func CountsEdgeSum(rank int, sendCounts, recvCounts []int) uint64 {
	n := len(sendCounts)
	t := edgeKeys.Load()
	if t == nil || t.rank != rank || t.size != n {
		t = &edgeTable{rank: rank, size: n, row: make([]uint64, n), col: make([]uint64, n)}
		for j := range n {
			t.row[j], t.col[j] = edgeKey(rank, j), edgeKey(j, rank)
		}
		edgeKeys.Store(t)
	}
	var s uint64
	for j, c := range sendCounts {
		s += uint64(c) * t.row[j]
	}
	for i, c := range recvCounts[:min(n, len(recvCounts))] {
		s -= uint64(c) * t.col[i]
	}
	return s
}

// edgeTable holds the keys of one rank's row (K(rank, j)) and column
// (K(i, rank)) at one size.
type edgeTable struct {
	rank, size int
	row, col   []uint64
}

// edgeKeys is the last rank's keys: a process is usually one rank.
var edgeKeys atomic.Pointer[edgeTable]

// edgeKey is K(i, j): splitmix64's finaliser of the pair, made odd.
func edgeKey(i, j int) uint64 {
	return mix64(uint64(i)*0x9e3779b97f4a7c15+uint64(j)*0xc2b2ae3d27d4eb4f) | 1
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
