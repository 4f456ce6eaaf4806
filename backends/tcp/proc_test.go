package tcp

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/generated/coll"
	"github.com/gocoll/gocoll/internal/proctest"
)

func TestMain(m *testing.M) {
	proctest.Register("conformance", conformanceBody)
	proctest.Register("kill", killBody)
	proctest.Register("agreement", agreementBody)
	proctest.Main(m)
}

// procGroup builds this process's Backend from what proctest gives a rank.
func procGroup(ctx context.Context, r *proctest.Rank, timeout time.Duration, opts ...Option) (*Backend, error) {
	g := core.Group{Rank: r.Rank, Size: r.Size, Store: core.WithPrefix(r.Store, "tcp/"), JobID: r.JobID, Secret: r.Secret, Timeout: timeout}
	return New(ctx, g, opts...)
}

func conformanceBody(ctx context.Context, r *proctest.Rank) error {
	b, err := procGroup(ctx, r, time.Minute, smallAlgos...)
	if err != nil {
		return err
	}
	defer b.Close()
	return runConform(ctx, core.NewGuard(b))
}

// TestConformanceProcesses runs the conformance suite with every rank a
// separate process, np = 1..8.
func TestConformanceProcesses(t *testing.T) {
	maxNP := 8
	if testing.Short() {
		maxNP = 4
	}
	for np := 1; np <= maxNP; np++ {
		t.Run(fmt.Sprintf("np=%d", np), func(t *testing.T) {
			proctest.Run(t, "conformance", np, proctest.Timeout(2*time.Minute))
		})
	}
}

const killVictim = 2

// killBody runs 4 MiB allreduces until something fails; the victim is
// killed (SIGKILL) after its first one. Survivors must fail with a
// PeerError that names the victim and blames its broken connection, not
// the timeout.
func killBody(ctx context.Context, r *proctest.Rank) error {
	b, err := procGroup(ctx, r, 30*time.Second)
	if err != nil {
		return err
	}
	defer b.Close()
	c := core.NewGuard(b)
	buf := make([]float32, 1<<20)
	for i := 0; ; i++ {
		if i == 1 {
			r.Mark("running")
		}
		err := coll.AllreduceFloat32(ctx, c, buf, buf, coll.OpSum)
		if err == nil {
			if i > 10000 {
				return errors.New("the victim was never killed")
			}
			continue
		}
		var pe *core.PeerError
		switch {
		case !errors.As(err, &pe):
			return fmt.Errorf("want a PeerError, got %w", err)
		case errors.Is(err, context.DeadlineExceeded):
			return fmt.Errorf("the failure was found by the timeout, not the broken connection: %w", err)
		}
		return fmt.Errorf("peer error naming ranks %v after %d allreduces: %w", pe.Ranks, i, err)
	}
}

// TestKillRank: kill -9 of one rank in the middle of allreduces makes every
// other rank fail, naming it.
func TestKillRank(t *testing.T) {
	np := 4
	var survivors []int
	for r := range np {
		if r != killVictim {
			survivors = append(survivors, r)
		}
	}
	res := proctest.Run(t, "kill", np,
		proctest.Timeout(time.Minute),
		proctest.KillOnMark(killVictim, "running"),
		proctest.ExpectError("peer error naming ranks ["+strconv.Itoa(killVictim)+"]", survivors...))
	for _, r := range res {
		if r.Rank != killVictim {
			t.Logf("rank %d after %v: %s", r.Rank, r.Duration.Round(time.Millisecond), r.Err)
		}
	}
}

// agreementBody runs, with every rank a process, the root disagreements
// of rootCases and a call that one rank refuses (a short buffer): every
// rank must return the MismatchError that names the right rank and field,
// and the calls after must run.
func agreementBody(ctx context.Context, r *proctest.Rank) error {
	b, err := procGroup(ctx, r, 30*time.Second)
	if err != nil {
		return err
	}
	defer b.Close()
	c := core.NewGuard(b)
	for _, rc := range rootCases {
		if err := runRootCase(ctx, c, rc, func(string, ...any) {}); err != nil {
			return fmt.Errorf("%s: %w", rc.name, err)
		}
	}
	const culprit = 1
	req := request(core.KindAllreduce, coll.DTypeFloat32, coll.OpSum, 1000, 0, r.Rank, r.Size)
	if r.Rank == culprit {
		req.Recv = req.Recv[:17]
	}
	err = c.Do(ctx, req)
	if r.Rank == culprit {
		if !errors.Is(err, core.ErrBufferLength) {
			return fmt.Errorf("the refused allreduce: got %v, want ErrBufferLength", err)
		}
	} else if err := checkRefused(err, r.Rank, culprit, core.KindAllreduce); err != nil {
		return err
	}
	return inStep(ctx, c)
}

// TestAgreementProcesses: disagreements and a refused call with every
// rank a process; see agreementBody.
func TestAgreementProcesses(t *testing.T) {
	proctest.Run(t, "agreement", 4, proctest.Timeout(time.Minute))
}
