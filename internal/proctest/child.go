package proctest

import (
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gocoll/gocoll/store"
)

// Exit codes of a child.
const (
	exitOK    = 0
	exitBody  = 1 // the body returned an error
	exitPanic = 2 // the body panicked
	exitSetup = 3 // the child could not become a rank (bad env, store unreachable)
)

// IsChild reports whether this process is a rank that Run started.
func IsChild() bool { return os.Getenv(envBody) != "" }

// Main runs the tests in the parent; in a child it runs the registered body
// as its rank and exits. Call it from TestMain after registering bodies:
//
//	func TestMain(m *testing.M) { proctest.Main(m) }
func Main(m *testing.M) {
	if IsChild() {
		os.Exit(runChild())
	}
	os.Exit(m.Run())
}

func runChild() int {
	// Processes the body starts must not inherit the report pipe: the
	// parent reads it to EOF.
	syscall.CloseOnExec(reportFD)
	report := os.NewFile(reportFD, "proctest-report")
	r := &Rank{report: report}
	fail := func(code int, format string, args ...any) int {
		msg := fmt.Sprintf(format, args...)
		fmt.Fprintln(os.Stderr, "proctest:", msg)
		r.send("error " + strconv.Quote(msg))
		return code
	}

	name := os.Getenv(envBody)
	body, ok := lookup(name)
	if !ok {
		return fail(exitSetup, "no body registered as %q in the child; register bodies in TestMain or init, not in a test", name)
	}
	var err error
	if r.Rank, err = strconv.Atoi(os.Getenv(envRank)); err != nil {
		return fail(exitSetup, "%s: %v", envRank, err)
	}
	if r.Size, err = strconv.Atoi(os.Getenv(envSize)); err != nil {
		return fail(exitSetup, "%s: %v", envSize, err)
	}
	if r.Secret, err = hex.DecodeString(os.Getenv(envSecret)); err != nil {
		return fail(exitSetup, "%s: %v", envSecret, err)
	}
	dl, err := strconv.ParseInt(os.Getenv(envDeadline), 10, 64)
	if err != nil {
		return fail(exitSetup, "%s: %v", envDeadline, err)
	}
	r.JobID = os.Getenv(envJob)
	r.StoreAddr = os.Getenv(envStore)
	if keys := os.Getenv(envKeys); keys != "" {
		for _, k := range strings.Split(keys, ",") {
			r.Env = append(r.Env, k+"="+os.Getenv(k))
		}
	}

	ctx, cancel := context.WithDeadline(context.Background(), time.Unix(0, dl))
	defer cancel()
	client, err := store.Dial(ctx, r.StoreAddr, r.Secret)
	if err != nil {
		return fail(exitSetup, "rank %d: dialing the test's store at %s: %v", r.Rank, r.StoreAddr, err)
	}
	defer client.Close()
	r.Store = client

	if err := callBody(ctx, body, r); err != nil {
		code := exitBody
		if _, ok := err.(panicError); ok {
			code = exitPanic
		}
		return fail(code, "%v", err)
	}
	r.send("ok")
	return exitOK
}

// panicError carries a body's panic and stack to the parent.
type panicError string

func (p panicError) Error() string { return string(p) }

func callBody(ctx context.Context, body func(context.Context, *Rank) error, r *Rank) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = panicError(fmt.Sprintf("rank %d panicked: %v\n%s", r.Rank, v, debug.Stack()))
		}
	}()
	return body(ctx, r)
}
