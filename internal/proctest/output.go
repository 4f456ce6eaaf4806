package proctest

import (
	"bytes"
	"fmt"
	"sync"
)

// maxOutput bounds the output kept per rank; a chatty rank keeps its first
// and (more useful when it fails) its last lines.
const maxOutput = 4 << 20

// rankOutput collects a rank's stdout and stderr, prefixing each line with
// the rank so that the output of several ranks stays readable.
type rankOutput struct {
	prefix []byte
	mu     sync.Mutex
	head   bytes.Buffer // the first maxOutput/2 bytes
	tail   []byte       // the last bytes after head filled up (a sliding window)
	cut    int64        // bytes dropped between head and tail
	midLn  bool         // the last write ended inside a line
}

func newRankOutput(rank int) *rankOutput {
	return &rankOutput{prefix: fmt.Appendf(nil, "[rank %d] ", rank)}
}

// Write implements io.Writer.
func (o *rankOutput) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := len(p) // io.Writer counts the caller's bytes, not the prefixed ones
	var buf []byte
	for len(p) > 0 {
		if !o.midLn {
			buf = append(buf, o.prefix...)
		}
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			buf = append(buf, p...)
			o.midLn = true
			break
		}
		buf = append(buf, p[:i+1]...)
		p = p[i+1:]
		o.midLn = false
	}
	o.store(buf)
	return n, nil
}

func (o *rankOutput) store(b []byte) {
	if room := maxOutput/2 - o.head.Len(); room > 0 {
		n := min(room, len(b))
		o.head.Write(b[:n])
		b = b[n:]
	}
	if len(b) == 0 {
		return
	}
	o.tail = append(o.tail, b...)
	if over := len(o.tail) - maxOutput/2; over > 0 {
		o.cut += int64(over)
		o.tail = append(o.tail[:0], o.tail[over:]...)
	}
}

// String returns everything kept, noting what was dropped.
func (o *rankOutput) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	s := o.head.String()
	if o.cut > 0 {
		s += fmt.Sprintf("\n%s... %d bytes of output dropped ...\n", o.prefix, o.cut)
	}
	return s + string(o.tail)
}
