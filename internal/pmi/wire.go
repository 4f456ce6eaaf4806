package pmi

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// The two wire formats, as MPICH's hydra (4.0) and Slurm's pmi2 plugin
// (22.05) speak them.
//
// PMI-1 ("v1"): one line per message, "cmd=NAME key=value key=value\n",
// tokens separated by spaces. Neither side escapes anything, so a value
// may hold no space, no newline and (for hydra's parser) no '='.
//
// PMI-2 ("v2"): a 6-character decimal length, space padded (hydra pads
// on the left, Slurm on the right), then that many bytes of
// "cmd=NAME;key=value;key=value;" with no newline. Neither server
// unescapes a ";;" in a value (both store "a;;b" as "a"), so a value
// may hold no ';'.

// maxMessage bounds one message, so that a server that sends garbage
// cannot make the client allocate without limit. Hydra's and Slurm's
// own limits are 1024 (PMI-1 lines) and 64 KiB (PMI-2 messages).
const maxMessage = 1 << 16

// pair is one key=value token; messages keep their order on the wire.
type pair struct{ key, value string }

// message is one parsed message: its command and its other tokens.
type message struct {
	cmd    string
	tokens []pair
}

// get returns the value of key and whether the message has it.
func (m *message) get(key string) (string, bool) {
	for _, t := range m.tokens {
		if t.key == key {
			return t.value, true
		}
	}
	return "", false
}

// integer returns the integer value of key.
func (m *message) integer(key string) (int, error) {
	v, ok := m.get(key)
	if !ok {
		return 0, fmt.Errorf("pmi: %s reply has no %s", m.cmd, key)
	}
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil {
		return 0, fmt.Errorf("pmi: %s reply has %s=%q, not an integer", m.cmd, key, v)
	}
	return n, nil
}

// String renders the message in PMI-1 form, for error messages.
func (m *message) String() string {
	var b strings.Builder
	b.WriteString("cmd=" + m.cmd)
	for _, t := range m.tokens {
		b.WriteString(" " + t.key + "=" + t.value)
	}
	return b.String()
}

// encodeV1 renders a PMI-1 line.
func encodeV1(cmd string, tokens ...pair) []byte {
	var b strings.Builder
	b.WriteString("cmd=" + cmd)
	for _, t := range tokens {
		b.WriteString(" " + t.key + "=" + t.value)
	}
	b.WriteByte('\n')
	return []byte(b.String())
}

// encodeV2 renders a PMI-2 message, length header included.
func encodeV2(cmd string, tokens ...pair) []byte {
	var b strings.Builder
	b.WriteString("cmd=" + cmd + ";")
	for _, t := range tokens {
		b.WriteString(t.key + "=" + t.value + ";")
	}
	return []byte(fmt.Sprintf("%6d", b.Len()) + b.String())
}

// readV1 reads one PMI-1 line.
func readV1(r *bufio.Reader) (*message, error) {
	line, err := readLine(r)
	if err != nil {
		return nil, err
	}
	return parseV1(line)
}

// readLine reads up to and without a newline, at most maxMessage bytes.
func readLine(r *bufio.Reader) (string, error) {
	var b []byte
	for {
		chunk, err := r.ReadSlice('\n')
		b = append(b, chunk...)
		if len(b) > maxMessage {
			return "", fmt.Errorf("pmi: a reply line is longer than %d bytes: is this a PMI server?", maxMessage)
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return "", err
		}
		return strings.TrimSuffix(string(b[:len(b)-1]), "\r"), nil
	}
}

// parseV1 parses a PMI-1 line (without its newline).
func parseV1(line string) (*message, error) {
	if !strings.HasPrefix(line, "cmd=") {
		return nil, fmt.Errorf("pmi: reply %q does not start with cmd=: is this a PMI-1 server?", clip(line))
	}
	m := &message{}
	for i, f := range strings.Fields(line) {
		k, v, _ := strings.Cut(f, "=")
		if i == 0 {
			m.cmd = v
			continue
		}
		m.tokens = append(m.tokens, pair{k, v})
	}
	if m.cmd == "" {
		return nil, fmt.Errorf("pmi: reply %q names no command", clip(line))
	}
	return m, nil
}

// readV2 reads one PMI-2 message.
func readV2(r *bufio.Reader) (*message, error) {
	var hdr [6]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(hdr[:])))
	if err != nil || n <= 0 || n > maxMessage {
		return nil, fmt.Errorf("pmi: reply header %q is not a PMI-2 length (1..%d): is this a PMI-2 server?", hdr[:], maxMessage)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return parseV2(string(body))
}

// parseV2 parses a PMI-2 message body (without its length header).
func parseV2(body string) (*message, error) {
	if !strings.HasPrefix(body, "cmd=") {
		return nil, fmt.Errorf("pmi: reply %q does not start with cmd=: is this a PMI-2 server?", clip(body))
	}
	m := &message{}
	for i, f := range strings.Split(body, ";") {
		if f == "" {
			continue
		}
		k, v, _ := strings.Cut(f, "=")
		if i == 0 {
			m.cmd = v
			continue
		}
		m.tokens = append(m.tokens, pair{k, v})
	}
	if m.cmd == "" {
		return nil, fmt.Errorf("pmi: reply %q names no command", clip(body))
	}
	return m, nil
}

// clip shortens s for an error message.
func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}
