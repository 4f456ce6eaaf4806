module github.com/gocoll/gocoll/cmd/gentool

go 1.26.0

require github.com/gocoll/gocoll/gen v0.0.0

replace github.com/gocoll/gocoll/gen => ../../gen
