package netns

import (
	"encoding/binary"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Netfilter queue protocol (linux/netfilter/nfnetlink_queue.h): the
// kernel hands each queued packet's id to a netlink socket and waits for a
// verdict on it. Attribute values are big-endian; netlink headers are in
// host order.
const (
	nfnlSubsysQueue = 3

	nfqnlMsgPacket       = 0
	nfqnlMsgConfig       = 2
	nfqnlMsgVerdictBatch = 3

	nfqaPacketHdr  = 1
	nfqaVerdictHdr = 2

	nfqaCfgCmd      = 1
	nfqaCfgParams   = 2
	nfqaCfgQueueMax = 3
	nfqaCfgMask     = 4
	nfqaCfgFlags    = 5

	nfqnlCfgCmdBind = 1
	nfqnlCopyMeta   = 1
	nfqaCfgFGSO     = 4 // queue GSO packets whole, not segmented first

	nfAccept = 1
)

// delayer holds every packet a node receives for a fixed time before the
// kernel may deliver it: netem's delay, for kernels built without
// sch_netem. An iptables rule sends the packets arriving on the node's
// Ifname to netfilter queue 0 of that namespace; the delayer reads only
// each packet's id (no payload is copied) and, once the oldest has waited
// its time, accepts it and every later one that has too in one batch
// verdict. Delaying on arrival rather than departure keeps the held
// packets out of the sender's TCP small-queue budget, as netem does by
// orphaning the packets it holds.
type delayer struct {
	f     *os.File
	delay time.Duration
	wg    sync.WaitGroup
	stop  atomic.Bool
	err   error // the first failure of either goroutine, after wg.Wait
	errMu sync.Mutex
}

// arrival is a queued packet: its id and when the kernel queued it.
type arrival struct {
	id uint32
	at time.Time
}

// startDelayer binds netfilter queue 0 in the calling thread's network
// namespace and starts holding its packets for d.
func startDelayer(d time.Duration) (*delayer, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("netfilter queue socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("binding the netfilter queue socket: %w", err)
	}
	// Room for bursts of packet messages; a lost message would strand a
	// packet until the batch verdict after it, so report none as lost.
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 16<<20)
	_ = unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_NO_ENOBUFS, 1)

	be32 := func(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
	configs := [][]byte{
		nlattr(nil, nfqaCfgCmd, []byte{nfqnlCfgCmdBind, 0, 0, 0}),
		nlattr(nil, nfqaCfgParams, append(be32(0), nfqnlCopyMeta)),
		nlattr(nil, nfqaCfgQueueMax, be32(1<<16)),
		nlattr(nlattr(nil, nfqaCfgFlags, be32(nfqaCfgFGSO)), nfqaCfgMask, be32(nfqaCfgFGSO)),
	}
	for i, attrs := range configs {
		if err := configure(fd, uint32(i+1), attrs); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("configuring netfilter queue 0: %w", err)
		}
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	q := &delayer{f: os.NewFile(uintptr(fd), "nfqueue"), delay: d}
	arrivals := make(chan arrival, 1<<16)
	q.wg.Add(2)
	go q.read(arrivals)
	go q.release(arrivals)
	return q, nil
}

// Stop ends the delayer and reports the first error it met. Packets still
// held are dropped by the kernel when the socket closes.
func (q *delayer) Stop() error {
	q.stop.Store(true)
	q.f.Close()
	q.wg.Wait()
	return q.err
}

func (q *delayer) fail(err error) {
	q.errMu.Lock()
	defer q.errMu.Unlock()
	if q.err == nil && !q.stop.Load() {
		q.err = err
	}
}

// read turns the kernel's packet messages into arrivals, in id order.
func (q *delayer) read(out chan<- arrival) {
	defer q.wg.Done()
	defer close(out)
	rc, err := q.f.SyscallConn()
	if err != nil {
		q.fail(err)
		return
	}
	buf := make([]byte, 1<<16)
	for {
		var n int
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			n, _, rerr = unix.Recvfrom(int(fd), buf, 0)
			return rerr != unix.EAGAIN
		})
		if err == nil {
			err = rerr
		}
		if err != nil {
			q.fail(fmt.Errorf("reading netfilter queue 0: %w", err))
			return
		}
		now := time.Now()
		msgs, err := parseNetlink(buf[:n])
		if err != nil {
			q.fail(fmt.Errorf("netfilter queue message: %w", err))
			return
		}
		for _, m := range msgs {
			if m.typ != nfnlSubsysQueue<<8|nfqnlMsgPacket || len(m.data) < 4 {
				continue
			}
			if id, ok := packetID(m.data[4:]); ok {
				out <- arrival{id, now}
			}
		}
	}
}

// release accepts packets once they have waited the delay: it sleeps
// until the oldest is due, then accepts it and every later one already
// due with one batch verdict (ids ascend in arrival order).
func (q *delayer) release(in <-chan arrival) {
	defer q.wg.Done()
	rc, err := q.f.SyscallConn()
	if err != nil {
		q.fail(err)
		return
	}
	var seq uint32
	var held *arrival
	for {
		a := held
		held = nil
		if a == nil {
			b, ok := <-in
			if !ok {
				return
			}
			a = &b
		}
		time.Sleep(time.Until(a.at.Add(q.delay)))
		last := a.id
	drain:
		for {
			select {
			case b, ok := <-in:
				if !ok {
					break drain
				}
				if time.Since(b.at) < q.delay {
					held = &b
					break drain
				}
				last = b.id
			default:
				break drain
			}
		}
		hdr := binary.BigEndian.AppendUint32(nil, nfAccept)
		hdr = binary.BigEndian.AppendUint32(hdr, last)
		seq++
		msg := nlmsg(nfqnlMsgVerdictBatch, 0, seq, nlattr(nil, nfqaVerdictHdr, hdr))
		var werr error
		err := rc.Write(func(fd uintptr) bool {
			werr = unix.Sendto(int(fd), msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
			return werr != unix.EAGAIN
		})
		if err == nil {
			err = werr
		}
		if err != nil {
			q.fail(fmt.Errorf("netfilter queue verdict: %w", err))
			// Keep draining so the reader never blocks on a full channel.
		}
	}
}

// packetID finds the packet id in a packet message's attributes.
func packetID(attrs []byte) (uint32, bool) {
	for len(attrs) >= 4 {
		l := int(binary.NativeEndian.Uint16(attrs))
		typ := binary.NativeEndian.Uint16(attrs[2:]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
		if l < 4 || l > len(attrs) {
			return 0, false
		}
		if typ == nfqaPacketHdr && l >= 8 {
			return binary.BigEndian.Uint32(attrs[4:]), true
		}
		attrs = attrs[min(len(attrs), (l+3)&^3):]
	}
	return 0, false
}

// configure sends one config message for queue 0 and waits for its ack.
func configure(fd int, seq uint32, attrs []byte) error {
	msg := nlmsg(nfqnlMsgConfig, unix.NLM_F_ACK, seq, attrs)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	buf := make([]byte, 4096)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return err
		}
		msgs, err := parseNetlink(buf[:n])
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if m.typ != unix.NLMSG_ERROR || m.seq != seq || len(m.data) < 4 {
				continue
			}
			if errno := int32(binary.NativeEndian.Uint32(m.data)); errno != 0 {
				return unix.Errno(-errno)
			}
			return nil
		}
	}
}

// nlmsg builds a netfilter-queue netlink message for queue 0.
func nlmsg(typ uint16, flags uint16, seq uint32, attrs []byte) []byte {
	const hdr = unix.NLMSG_HDRLEN + 4 // nlmsghdr, nfgenmsg
	b := make([]byte, hdr, hdr+len(attrs))
	binary.NativeEndian.PutUint32(b[0:], uint32(hdr+len(attrs)))
	binary.NativeEndian.PutUint16(b[4:], nfnlSubsysQueue<<8|typ)
	binary.NativeEndian.PutUint16(b[6:], unix.NLM_F_REQUEST|flags)
	binary.NativeEndian.PutUint32(b[8:], seq)
	// nfgenmsg: family AF_UNSPEC, version 0, queue number 0 (big-endian).
	return append(b, attrs...)
}

// nlattr appends a netlink attribute, padded to 4 bytes.
func nlattr(b []byte, typ uint16, val []byte) []byte {
	b = binary.NativeEndian.AppendUint16(b, uint16(4+len(val)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, val...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// nlMessage is one netlink message: its type, sequence and payload.
type nlMessage struct {
	typ  uint16
	seq  uint32
	data []byte
}

// parseNetlink splits a datagram into its netlink messages.
func parseNetlink(b []byte) ([]nlMessage, error) {
	var msgs []nlMessage
	for len(b) >= unix.NLMSG_HDRLEN {
		l := int(binary.NativeEndian.Uint32(b))
		if l < unix.NLMSG_HDRLEN || l > len(b) {
			return msgs, fmt.Errorf("netlink message of %d bytes in %d", l, len(b))
		}
		msgs = append(msgs, nlMessage{
			typ:  binary.NativeEndian.Uint16(b[4:]),
			seq:  binary.NativeEndian.Uint32(b[8:]),
			data: b[unix.NLMSG_HDRLEN:l],
		})
		b = b[min(len(b), (l+3)&^3):]
	}
	return msgs, nil
}
