// Command gentool generates gocoll's typed collectives API and reduction
// kernels from a collectives spec.
//
//	gentool -spec spec/collectives.yaml -out generated
//
// writes generated/<package>/ (the typed API; package is the spec's
// package:) and generated/kernels/ (the table that registers the spec's
// dtypes, ops and kernels with the runtime, and their AVX2 and AVX-512
// assembly); each with its tests. Only what depends on the spec is
// generated: the rest is gocoll's own packages, which the output imports.
// A downstream spec whose dtypes are all gocoll's may pass -kernels=false:
// its typed package then imports gocoll's generated/kernels. Run it from
// go:generate; the output is gofmt'd and the same for the same spec.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/gocoll/gocoll/gen"
)

func main() {
	// A FlagSet of our own: avo's build package, linked in through the
	// assembly generator, registers its flags on flag.CommandLine.
	fs := flag.NewFlagSet("gentool", flag.ExitOnError)
	specPath := fs.String("spec", "spec/collectives.yaml", "the collectives spec to read")
	out := fs.String("out", "generated", "directory to write the generated packages under")
	kernels := fs.Bool("kernels", true, "also generate the kernels package (out/kernels); without it, the typed package uses gocoll's")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: gentool [-spec file] [-out dir] [-kernels=false]\n")
		fs.PrintDefaults()
	}
	fs.Parse(os.Args[1:])
	if fs.NArg() != 0 {
		fs.Usage()
		os.Exit(2)
	}
	if err := gen.Run(gen.Options{Spec: *specPath, Out: *out, Kernels: *kernels}); err != nil {
		fmt.Fprintln(os.Stderr, "gentool:", err)
		os.Exit(1)
	}
}
