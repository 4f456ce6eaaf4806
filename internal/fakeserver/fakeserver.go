// Package fakeserver runs stand-in servers for tests that check how
// gocoll's clients meet something other than the server they expect on
// a port: stray TCP servers that send garbage, a banner or nothing, and
// a real torch.distributed.TCPStore.
package fakeserver

import (
	"bufio"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// TorchPython is the interpreter that has Debian's python3-torch; the
// first python3 on PATH may be another one.
const TorchPython = "/usr/bin/python3"

// Serve handles one connection. hold is closed when the test ends, so a
// Serve that must keep its connection open (and silent) waits on it.
type Serve func(nc net.Conn, hold <-chan struct{})

// Silent accepts and sends nothing until the test ends.
func Silent(nc net.Conn, hold <-chan struct{}) { <-hold }

// Sends writes data and then keeps the connection open until the test
// ends.
func Sends(data string) Serve {
	return func(nc net.Conn, hold <-chan struct{}) {
		io.WriteString(nc, data)
		<-hold
	}
}

// SendsAndCloses writes data and closes the connection.
func SendsAndCloses(data string) Serve {
	return func(nc net.Conn, hold <-chan struct{}) { io.WriteString(nc, data) }
}

// Start runs serve on every connection to a fresh loopback port until
// t ends, and returns the address. Cleanup releases the held
// connections, closes the listener and waits for every Serve to return.
func Start(t testing.TB, serve Serve) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hold := make(chan struct{})
	var wg sync.WaitGroup
	t.Cleanup(func() { close(hold); ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer nc.Close()
				serve(nc, hold)
			}()
		}
	}()
	return ln.Addr().String()
}

// Port is Start returning the port alone, for tests that set
// MASTER_PORT.
func Port(t testing.TB, serve Serve) int {
	t.Helper()
	return port(t, Start(t, serve))
}

func port(t testing.TB, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TorchStore starts a real torch.distributed.TCPStore server, as
// torchrun's agent does, that lives until owner ends, and returns its
// port. It skips t (which may be owner or one of its subtests) when
// torch is not installed.
func TorchStore(owner, t testing.TB) int {
	t.Helper()
	if err := exec.Command(TorchPython, "-c", "import torch.distributed").Run(); err != nil {
		t.Skipf("%s cannot import torch.distributed (%v): apt-get install python3-torch", TorchPython, err)
	}
	cmd := exec.Command(TorchPython, "-c", `
import sys, torch.distributed as d
s = d.TCPStore("127.0.0.1", 0, 1, True, wait_for_workers=False)
print(s.port, flush=True)
sys.stdin.read()
`)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	owner.Cleanup(func() { in.Close(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("the torch store did not print its port: %v", err)
	}
	port, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatalf("the torch store printed %q, not its port", line)
	}
	return port
}
