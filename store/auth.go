package store

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
)

// Handshake. Before any frame, each side proves it holds the job secret
// without sending it, and without a replayable token:
//
//	server -> client: magic "GCS1" | server nonce (32)
//	client -> server: client nonce (32) | HMAC(secret, "gocoll-store/1 client" | sn | cn)
//	server -> client: 0x01 | HMAC(secret, "gocoll-store/1 server" | sn | cn)   (accepted)
//	               or 0x00                                                     (refused, then close)
//
// Fresh nonces on both sides defeat replay; the distinct labels stop a
// client from reflecting the server's proof back as its own. The client
// checks the server's proof too, so a rank never hands rendezvous data to
// a stranger listening on the master port.

const (
	magic    = "GCS1"
	nonceLen = 32
	macLen   = sha256.Size

	labelClient = "gocoll-store/1 client"
	labelServer = "gocoll-store/1 server"
)

// ErrAuth is wrapped by the error Dial returns when the server refuses
// the client's secret, or the server cannot prove it holds the secret.
var ErrAuth = errors.New("store: authentication failed")

func proof(secret []byte, label string, sn, cn []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(label))
	m.Write(sn)
	m.Write(cn)
	return m.Sum(nil)
}

func nonce() ([]byte, error) {
	b := make([]byte, nonceLen)
	if _, err := rand.Read(b); err != nil {
		return nil, fmt.Errorf("store: reading random nonce: %w", err)
	}
	return b, nil
}

// serverHandshake runs the server side on rw. It returns nil if the
// client proved it holds secret; otherwise the caller closes the
// connection and logs the returned error.
func serverHandshake(rw io.ReadWriter, secret []byte) error {
	sn, err := nonce()
	if err != nil {
		return err
	}
	if _, err := rw.Write(append([]byte(magic), sn...)); err != nil {
		return fmt.Errorf("sending challenge: %w", err)
	}
	var in [nonceLen + macLen]byte
	if _, err := io.ReadFull(rw, in[:]); err != nil {
		return fmt.Errorf("reading the client's proof: %w", err)
	}
	cn, mac := in[:nonceLen], in[nonceLen:]
	if !hmac.Equal(mac, proof(secret, labelClient, sn, cn)) {
		rw.Write([]byte{0}) // best effort: tell the client why before closing
		return errors.New("client does not hold the job secret")
	}
	if _, err := rw.Write(append([]byte{1}, proof(secret, labelServer, sn, cn)...)); err != nil {
		return fmt.Errorf("sending the server's proof: %w", err)
	}
	return nil
}

// clientHandshake runs the client side on rw.
func clientHandshake(rw io.ReadWriter, secret []byte, addr string) error {
	var ch [len(magic) + nonceLen]byte
	if _, err := io.ReadFull(rw, ch[:]); err != nil {
		return fmt.Errorf("store: reading the challenge from %s (is it a gocoll store?): %w", addr, err)
	}
	return clientProve(rw, ch[:], secret, addr)
}

// clientProve runs the client side on rw after the challenge ch (magic
// and server nonce) has been read.
func clientProve(rw io.ReadWriter, ch, secret []byte, addr string) error {
	if string(ch[:len(magic)]) != magic {
		return fmt.Errorf("%w: %s sent %s, not a gocoll store's challenge", ErrNotStore, addr, quote(ch[:len(magic)]))
	}
	sn := ch[len(magic):]
	cn, err := nonce()
	if err != nil {
		return err
	}
	if _, err := rw.Write(append(cn, proof(secret, labelClient, sn, cn)...)); err != nil {
		return fmt.Errorf("store: sending proof to %s: %w", addr, err)
	}
	var st [1]byte
	if _, err := io.ReadFull(rw, st[:]); err != nil {
		return fmt.Errorf("%w: %s closed the connection during the handshake (%v); check that this process has the job's secret (GOCOLL_SECRET)", ErrAuth, addr, err)
	}
	if st[0] != 1 {
		return fmt.Errorf("%w: %s refused this client's secret; set GOCOLL_SECRET (or WithSecret) to the secret the launcher gave the job", ErrAuth, addr)
	}
	var mac [macLen]byte
	if _, err := io.ReadFull(rw, mac[:]); err != nil {
		return fmt.Errorf("store: reading the server's proof from %s: %w", addr, err)
	}
	if !hmac.Equal(mac[:], proof(secret, labelServer, sn, cn)) {
		return fmt.Errorf("%w: %s could not prove it holds the job secret; another program may be listening on that port", ErrAuth, addr)
	}
	return nil
}
