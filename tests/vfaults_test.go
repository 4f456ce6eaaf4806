package tests

import (
	"context"
	"errors"
	"fmt"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/generated/coll"
)

// vectorFault runs the vector collectives' fault probes at np=3: counts
// that disagree are a *core.MismatchError on "counts" on every rank,
// naming the culprit with the exact counts; displacements one rank alone
// can tell are wrong are its argument error.
func vectorFault(ctx context.Context, c core.Comm, fault string, rank int) error {
	n := c.Size()
	switch fault {
	case "vcounts":
		counts := []int{1, 2, 3}
		if rank == 2 {
			counts = []int{2, 2, 3}
		}
		send, recv := make([]float32, counts[rank]), make([]float32, counts[0]+counts[1]+counts[2])
		err := coll.AllgathervFloat32(ctx, c, send, recv, counts, nil)
		fmt.Printf("fault error: %v\n", err)
		return wantMismatch(err, rank, "counts", 2, "[1 2 3]", "[2 2 3]")
	case "vcounts-pair":
		sendCounts, recvCounts := make([]int, n), make([]int, n)
		for j := range n {
			sendCounts[j], recvCounts[j] = 10*rank+j, 10*j+rank
		}
		if rank == 2 {
			recvCounts[1]++
		}
		send, recv := make([]int32, sum(sendCounts)), make([]int32, sum(recvCounts))
		err := coll.AlltoallvInt32(ctx, c, send, recv, sendCounts, nil, recvCounts, nil)
		fmt.Printf("fault error: %v\n", err)
		var me *core.MismatchError
		if !errors.As(err, &me) || me.Field != "counts" || me.Rank != rank {
			return fmt.Errorf("rank %d: %v, want a *core.MismatchError on counts", rank, err)
		}
		if me.Peer != 1 && me.Peer != 2 {
			return fmt.Errorf("rank %d: %v: want rank 1 or 2, the pair that disagrees, named", rank, err)
		}
		return nil
	case "vdispls":
		counts := []int{2, 2, 2}
		displs := []int{0, 2, 4}
		if rank == 1 {
			displs = []int{0, 1, 4}
		}
		send, recv := make([]float64, 2), make([]float64, 6)
		err := coll.AllgathervFloat64(ctx, c, send, recv, counts, displs)
		fmt.Printf("fault error: %v\n", err)
		return wantArgument(err, rank, 1, core.ErrInvalid)
	}
	return fmt.Errorf("unknown fault %q", fault)
}

func sum(v []int) int {
	s := 0
	for _, c := range v {
		s += c
	}
	return s
}
