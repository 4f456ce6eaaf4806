// Command halfasm writes package half's bulk conversion assembly
// (bulk_amd64.s and its Go declarations, bulk_asm_amd64.go). It depends on
// no spec; `go generate .` at gocoll's root runs it:
//
//	go run -C gen ./cmd/halfasm -dir ../half
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/gocoll/gocoll/gen/halfasm"
)

func main() {
	out := flag.String("dir", "", "package half's directory")
	flag.Parse()
	if *out == "" || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: halfasm -dir DIR (package half's directory)")
		os.Exit(2)
	}
	if err := halfasm.Generate(*out); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
