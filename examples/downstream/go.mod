module example.com/downstream

go 1.26.0

tool github.com/gocoll/gocoll/cmd/gentool

require github.com/gocoll/gocoll v0.1.0

require (
	github.com/dave/jennifer v1.7.1 // indirect
	github.com/goccy/go-yaml v1.19.2 // indirect
	github.com/gocoll/gocoll/cmd/gentool v0.1.0 // indirect
	github.com/gocoll/gocoll/gen v0.1.0 // indirect
	github.com/klauspost/cpuid/v2 v2.4.2 // indirect
	github.com/mmcloughlin/avo v0.6.0 // indirect
	golang.org/x/mod v0.42.0 // indirect
	golang.org/x/sync v0.24.0 // indirect
	golang.org/x/sys v0.49.0 // indirect
	golang.org/x/tools v0.52.0 // indirect
)
