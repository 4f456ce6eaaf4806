// Command hello is the smallest gocoll job: every rank says who and where
// it is, the ranks pass a few barriers, and an allreduce of the ranks
// checks that they really talk.
//
// Under gocollrun:
//
//	go build -o hello ./examples/hello
//	go run ./cmd/gocollrun -np 4 ./hello
//
// Under Open MPI's mpirun (the store is served by rank 0 at MASTER_ADDR:
// MASTER_PORT, and mpirun does not make a secret, so pass one):
//
//	mpirun --allow-run-as-root --oversubscribe -np 4 \
//	    -x MASTER_ADDR=127.0.0.1 -x MASTER_PORT=29500 -x GOCOLL_SECRET=$(openssl rand -hex 16) ./hello
//
// Under MPICH's mpiexec, or srun --mpi=pmi2, nothing needs exporting: the
// ranks share the store's address and a fresh secret through the
// launcher's PMI:
//
//	mpiexec.mpich -n 4 ./hello
//	srun --mpi=pmi2 -n 4 ./hello
//
// Under torchrun nothing needs exporting either (Debian's torchrun needs
// --redirects 1 --tee 1 on Python 3.11):
//
//	torchrun --nproc_per_node=4 --redirects 1 --tee 1 --no_python ./hello
//
// Flags: -barriers N (default 10).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/gocoll/gocoll/dispatch"
	"github.com/gocoll/gocoll/generated/coll"
)

func main() {
	barriers := flag.Int("barriers", 10, "barriers to pass")
	flag.Parse()
	if err := run(*barriers); err != nil {
		fmt.Fprintln(os.Stderr, "hello:", err)
		os.Exit(1)
	}
}

func run(barriers int) error {
	ctx := context.Background()
	c, err := dispatch.Init(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	host, _ := os.Hostname()
	fmt.Printf("hello from rank %d of %d (local rank %d of %d, node %d of %d, host %s, backend %s, store %s)\n",
		c.Rank(), c.Size(), c.LocalRank(), c.LocalSize(), c.NodeRank(), c.NumNodes(), host, c.Backend(), c.KVSAddr())
	for i := 0; i < barriers; i++ {
		if err := c.Barrier(ctx); err != nil {
			return fmt.Errorf("barrier %d: %w", i, err)
		}
	}
	// Sum of the ranks: every rank must get size*(size-1)/2.
	send := []int64{int64(c.Rank())}
	recv := make([]int64, 1)
	if err := coll.AllreduceInt64(ctx, c, send, recv, coll.OpSum); err != nil {
		return fmt.Errorf("allreduce: %w", err)
	}
	n := int64(c.Size())
	if recv[0] != n*(n-1)/2 {
		return fmt.Errorf("allreduce of the ranks gave %d, want %d", recv[0], n*(n-1)/2)
	}
	fmt.Printf("rank %d passed %d barriers; sum of ranks = %d\n", c.Rank(), barriers, recv[0])
	return nil
}
