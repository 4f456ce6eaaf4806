// Package netns runs the ranks of a test as separate "nodes": Linux network
// namespaces joined by veth pairs to a bridge, built with iproute2 (ip netns,
// ip link, tc). Each node has its own IP address and network stack, so
// traffic between ranks on different nodes crosses a real (virtual) link
// that tc can shape like a datacenter one.
//
// Layout for k nodes, all names prefixed with a per-process prefix:
//
//	<prefix>hub:   bridge "br0" 10.99.0.254/24, veths "h0".."h<k-1>" enslaved
//	<prefix>n<i>:  veth "eth0" 10.99.0.<i+1>/24 (peer of h<i>), lo
//
// The root namespace is never touched. The test's rendezvous store listens
// inside the hub namespace, and ranks run under "ip netns exec <node>".
//
// It needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and the ip command; tests
// skip with a message saying so otherwise. Shaping a link's delay on a kernel
// without netem also needs iptables (see Shape). Every namespace is deleted when
// the test ends, pass or fail; namespaces left by a killed test process
// (whose pid is gone) are deleted by the next Setup.
package netns

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gocoll/gocoll/internal/proctest"
)

// Ifname is the interface each node's ranks use (GOCOLL_SOCKET_IFNAME).
const Ifname = "eth0"

// namePrefix starts every namespace this package makes; the pid follows.
const namePrefix = "gcnet"

// Net is a set of nodes joined by a bridge.
type Net struct {
	Hub     string   // the hub namespace (bridge and store)
	HubIP   string   // the bridge's address
	Nodes   []string // node namespaces
	NodeIPs []string // each node's eth0 address
}

// ip runs the ip command (or tc, when args[0] is "tc") and returns its
// combined output as the error text on failure.
func run(name string, args ...string) error {
	cmd := exec.Command(name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

// Usable reports why this machine cannot run netns tests, or "" if it can.
func Usable() string {
	if os.Geteuid() != 0 {
		return "network-namespace tests need root (CAP_NET_ADMIN, CAP_SYS_ADMIN); run as root, as CI does"
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return "network-namespace tests need the ip command (apt-get install iproute2)"
	}
	return ""
}

// Setup builds k nodes and a hub, skipping t when the machine cannot, and
// registers their deletion with t.Cleanup.
func Setup(t testing.TB, k int) *Net {
	t.Helper()
	if why := Usable(); why != "" {
		t.Skip(why)
	}
	cleanStale()
	clean := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			return r
		}
		return '_'
	}, t.Name())
	prefix := fmt.Sprintf("%s%d%s", namePrefix, os.Getpid(), clean)
	if len(prefix) > 40 {
		prefix = prefix[:40]
	}
	n := &Net{Hub: prefix + "-hub", HubIP: "10.99.0.254"}
	var made []string
	t.Cleanup(func() {
		for _, ns := range made {
			if err := run("ip", "netns", "del", ns); err != nil {
				t.Errorf("cleaning up: %v", err)
			}
		}
	})
	add := func(ns string) {
		if err := run("ip", "netns", "add", ns); err != nil {
			t.Skipf("cannot create network namespaces here (%v); the netns tests need a kernel and container that allow them", err)
		}
		made = append(made, ns)
		must(t, run("ip", "-n", ns, "link", "set", "lo", "up"))
	}
	add(n.Hub)
	must(t, run("ip", "-n", n.Hub, "link", "add", "br0", "type", "bridge"))
	must(t, run("ip", "-n", n.Hub, "addr", "add", n.HubIP+"/24", "dev", "br0"))
	must(t, run("ip", "-n", n.Hub, "link", "set", "br0", "up"))
	for i := range k {
		ns := fmt.Sprintf("%s-n%d", prefix, i)
		add(ns)
		h := "h" + strconv.Itoa(i)
		ip := fmt.Sprintf("10.99.0.%d", i+1)
		must(t, run("ip", "-n", n.Hub, "link", "add", h, "type", "veth", "peer", "name", Ifname, "netns", ns))
		must(t, run("ip", "-n", n.Hub, "link", "set", h, "master", "br0"))
		must(t, run("ip", "-n", n.Hub, "link", "set", h, "up"))
		must(t, run("ip", "-n", ns, "addr", "add", ip+"/24", "dev", Ifname))
		must(t, run("ip", "-n", ns, "link", "set", Ifname, "up"))
		n.Nodes = append(n.Nodes, ns)
		n.NodeIPs = append(n.NodeIPs, ip)
	}
	return n
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// cleanStale deletes namespaces this package made in processes that no
// longer exist (a test killed before its cleanup ran).
func cleanStale() {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		rest, ok := strings.CutPrefix(name, namePrefix)
		if !ok {
			continue
		}
		end := 0
		for end < len(rest) && rest[end] >= '0' && rest[end] <= '9' {
			end++
		}
		pid, err := strconv.Atoi(rest[:end])
		if err != nil || pid == os.Getpid() {
			continue
		}
		if syscall.Kill(pid, 0) == nil || !errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
			continue // still alive (or not ours to judge)
		}
		_ = run("ip", "netns", "del", name)
	}
}

// Shape limits every node's outgoing traffic to rate (tc syntax, e.g.
// "1gbit") and delays every packet by delay (e.g. "1ms") one way, so that
// every node has a full-duplex link of that rate and latency to the
// bridge. It uses netem where the kernel has it. Otherwise a token bucket
// (tbf) shapes the rate and, where iptables is installed, a delayer holds
// each node's arriving packets in a netfilter queue for the delay; without
// iptables the delay is not emulated. It returns what it installed, and
// whether every node's packets are delayed.
func (n *Net) Shape(t testing.TB, rate, delay string) (how string, delayed bool) {
	t.Helper()
	delayed = true
	for _, ns := range n.Nodes {
		err := run("ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", Ifname, "root", "netem", "delay", delay, "rate", rate)
		if err == nil {
			how = fmt.Sprintf("netem delay %s rate %s", delay, rate)
			continue
		}
		if !strings.Contains(err.Error(), "qdisc kind is unknown") {
			t.Fatal(err)
		}
		// No sch_netem in this kernel: a token bucket gives the rate. The
		// burst must hold at least rate/HZ and a whole 64 KiB GSO packet
		// (256 KiB is 2 ms at 1 Gbit/s); 12 ms of queue is what netem's
		// default 1000-packet limit holds at this rate.
		must(t, run("ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", Ifname, "root", "tbf", "rate", rate, "burst", "256kb", "latency", "12ms"))
		if _, err := exec.LookPath("iptables"); err != nil {
			how = fmt.Sprintf("tbf rate %s (no delay: this kernel has no sch_netem and iptables is not installed, so the %s delay is not emulated)", rate, delay)
			delayed = false
			continue
		}
		d, err := time.ParseDuration(delay)
		if err != nil {
			t.Fatalf("delay %q: %v", delay, err)
		}
		var q *delayer
		err = inNamespace(ns, func() (err error) {
			q, err = startDelayer(d)
			return err
		})
		if err == nil {
			t.Cleanup(func() {
				if err := q.Stop(); err != nil {
					t.Errorf("node %s's delayer: %v", ns, err)
				}
			})
			// The queue is bound before the rule exists, so no packet
			// meets the rule without a reader.
			err = run("ip", "netns", "exec", ns, "iptables", "-A", "INPUT", "-i", Ifname, "-j", "NFQUEUE", "--queue-num", "0")
		}
		if err != nil {
			how = fmt.Sprintf("tbf rate %s (no delay: this kernel has no sch_netem, and a netfilter queue could not stand in: %v)", rate, err)
			delayed = false
			continue
		}
		how = fmt.Sprintf("tbf rate %s, and a %s delay on arrival through a netfilter queue (this kernel has no sch_netem)", rate, delay)
	}
	return how, delayed
}

// inNamespace runs fn on a thread in network namespace ns. Sockets fn
// makes stay in ns after it returns, whichever thread uses them. Only this
// goroutine's locked thread changes namespace; Go starts new threads from
// a clean template thread while it is locked.
func inNamespace(ns string, fn func() error) error {
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	target, err := os.Open("/run/netns/" + ns)
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	err = unix.Setns(int(target.Fd()), unix.CLONE_NEWNET)
	target.Close()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("entering namespace %s: %w", ns, err)
	}
	ferr := fn()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// Leave the thread locked: Go discards it when this goroutine
		// ends, rather than reuse a thread in the wrong namespace.
		return fmt.Errorf("returning from namespace %s: %w", ns, err)
	}
	runtime.UnlockOSThread()
	return ferr
}

// Run runs a proctest body with np ranks spread over the nodes in blocks
// (ranks 0..np/k-1 on node 0, and so on), each rank under "ip netns exec"
// with GOCOLL_SOCKET_IFNAME set and GOCOLL_NODE_ID naming its node. The
// store listens on the hub's bridge.
func (n *Net) Run(t *testing.T, body string, np int, opts ...proctest.Option) []proctest.Result {
	t.Helper()
	k := len(n.Nodes)
	node := func(r int) int { return r * k / np }
	opts = append([]proctest.Option{
		proctest.Wrapper(func(r int) []string { return []string{"ip", "netns", "exec", n.Nodes[node(r)]} }),
		proctest.RankEnv(func(r int) []string {
			return []string{"GOCOLL_SOCKET_IFNAME=" + Ifname, "GOCOLL_NODE_ID=" + n.Nodes[node(r)]}
		}),
		proctest.StoreAddr(n.HubIP+":0", n.HubIP),
	}, opts...)

	// The store's socket must be made inside the hub namespace (ip netns
	// exec moves each rank to its node wherever it is started from).
	var res []proctest.Result
	if err := inNamespace(n.Hub, func() error {
		res = proctest.Run(t, body, np, opts...)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return res
}
