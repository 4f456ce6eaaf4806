package object

import (
	"bytes"
	"context"
	"encoding/gob"
	"fmt"

	"github.com/gocoll/gocoll/core"
)

// Codec turns values into bytes and back. Marshal gets a pointer to the
// value and Unmarshal a pointer to a zero value of the same type to fill.
type Codec interface {
	Marshal(v any) ([]byte, error)
	Unmarshal(data []byte, v any) error
}

// Gob is the default Codec: encoding/gob, one self-describing stream per
// value. Gob sends exported fields only, skips func and chan fields, and
// needs gob.Register for the concrete types held in interface values.
type Gob struct{}

// Marshal encodes v with a fresh gob.Encoder.
func (Gob) Marshal(v any) ([]byte, error) {
	var b bytes.Buffer
	if err := gob.NewEncoder(&b).Encode(v); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// Unmarshal decodes data, one value's stream, into v.
func (Gob) Unmarshal(data []byte, v any) error {
	return gob.NewDecoder(bytes.NewReader(data)).Decode(v)
}

// Option configures an object collective.
type Option func(*options)

type options struct{ codec Codec }

// WithCodec encodes and decodes the values with codec instead of gob.
// Every rank must pass an equivalent codec.
func WithCodec(codec Codec) Option { return func(o *options) { o.codec = codec } }

func codecOf(opts []Option) Codec {
	o := options{codec: Gob{}}
	for _, f := range opts {
		f(&o)
	}
	return o.codec
}

// encode encodes v, turning a codec panic (gob panics on some types it
// cannot walk) into an error, so that the rank still takes its part.
func encode[T any](codec Codec, v *T) (data []byte, err error) {
	defer func() {
		if p := recover(); p != nil {
			data, err = nil, fmt.Errorf("the codec panicked: %v", p)
		}
	}()
	return codec.Marshal(v)
}

// decode decodes data into a fresh T: decoding into a used one would keep
// the fields the stream leaves out.
func decode[T any](codec Codec, op string, from int, data []byte) (T, error) {
	var v T
	if err := codec.Unmarshal(data, &v); err != nil {
		return v, fmt.Errorf("gocoll: object %s: decoding rank %d's %d-byte value as %T: %w", op, from, len(data), v, err)
	}
	return v, nil
}

// encodeError wraps this rank's encoding error for the header and its own
// return.
func encodeError(v any, err error) error {
	return fmt.Errorf("encoding a %T: %w", v, err)
}

// Broadcast sends root's v to every rank and returns it: on the root v
// itself, elsewhere the decoded copy (v is not read there). See
// BroadcastBytes for how the bytes move and the package documentation for
// errors.
func Broadcast[T any](ctx context.Context, c core.Comm, v T, root int, opts ...Option) (T, error) {
	codec := codecOf(opts)
	var data []byte
	var fail error
	if c.Rank() == root {
		if data, fail = encode(codec, &v); fail != nil {
			fail = encodeError(v, fail)
		}
	}
	got, err := broadcast(ctx, c, data, fail, root)
	if err != nil || c.Rank() == root {
		return v, err
	}
	return decode[T](codec, "broadcast", root, got)
}

// Allgather gathers every rank's v on every rank: element r of the result
// is rank r's value, decoded (this rank's too, so that every element went
// through the codec alike).
func Allgather[T any](ctx context.Context, c core.Comm, v T, opts ...Option) ([]T, error) {
	codec := codecOf(opts)
	data, fail := encode(codec, &v)
	if fail != nil {
		fail = encodeError(v, fail)
	}
	all, err := allgather(ctx, c, data, fail)
	if err != nil {
		return nil, err
	}
	return decodeAll[T](codec, "allgather", all)
}

// Gather gathers every rank's v on root: there element r of the result is
// rank r's value, decoded; elsewhere the result is nil.
func Gather[T any](ctx context.Context, c core.Comm, v T, root int, opts ...Option) ([]T, error) {
	codec := codecOf(opts)
	data, fail := encode(codec, &v)
	if fail != nil {
		fail = encodeError(v, fail)
	}
	all, err := gather(ctx, c, data, fail, root)
	if err != nil || all == nil {
		return nil, err
	}
	return decodeAll[T](codec, "gather", all)
}

// Scatter sends vs[r] from root to rank r and returns this rank's value:
// vs is read on the root only, where it must hold one value per rank. On
// the root the result is vs[root] itself.
func Scatter[T any](ctx context.Context, c core.Comm, vs []T, root int, opts ...Option) (T, error) {
	codec := codecOf(opts)
	var parts [][]byte
	var fail error
	if c.Rank() == root {
		if len(vs) != c.Size() {
			fail = fmt.Errorf("gocoll: object scatter: %w: the root passed %d values for %d ranks; pass one per rank", core.ErrInvalid, len(vs), c.Size())
		}
		for r := 0; fail == nil && r < len(vs); r++ {
			data, err := encode(codec, &vs[r])
			if err != nil {
				fail = fmt.Errorf("value %d: %w", r, encodeError(vs[r], err))
			}
			parts = append(parts, data)
		}
	}
	got, err := scatter(ctx, c, parts, fail, root)
	if err != nil {
		var zero T
		return zero, err
	}
	if c.Rank() == root {
		return vs[root], nil
	}
	return decode[T](codec, "scatter", root, got)
}

func decodeAll[T any](codec Codec, op string, all [][]byte) ([]T, error) {
	out := make([]T, len(all))
	for r, data := range all {
		v, err := decode[T](codec, op, r, data)
		if err != nil {
			return nil, err
		}
		out[r] = v
	}
	return out, nil
}
