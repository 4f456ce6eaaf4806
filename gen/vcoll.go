package gen

import (
	"fmt"
	"strings"

	"github.com/dave/jennifer/jen"
	"github.com/gocoll/gocoll/gen/spec"
)

// vectorField is the core.Request field a vector argument fills.
func vectorField(v spec.Vector) string {
	side := "Send"
	if v.Of == "recv" {
		side = "Recv"
	}
	if v.Displs {
		return side + "Displs"
	}
	return side + "Counts"
}

// vectorParts appends a vector collective's []int parameters to params
// and, with dict, sets the core.Request fields they fill; nothing for the
// other collectives.
func vectorParts(c spec.Collective, params *[]jen.Code, dict jen.Dict) {
	if !c.Vector() {
		return
	}
	var names []jen.Code
	for _, v := range c.Vectors {
		names = append(names, jen.Id(v.Name))
		if dict != nil {
			dict[jen.Id(vectorField(v))] = jen.Id(v.Name)
		}
	}
	*params = append(*params, jen.List(names...).Index().Int())
}

// vectorDoc describes a vector collective's buffers and vectors for its
// typed functions' doc comment.
func vectorDoc(c spec.Collective) string {
	counts, displs := map[string]string{}, map[string]string{}
	var shared string
	for _, v := range c.Vectors {
		if v.Displs {
			displs[v.Of] = v.Name
		} else {
			counts[v.Of] = v.Name
			if shared == "" || v.Of == "recv" {
				shared = v.Name
			}
		}
	}
	var parts []string
	for _, b := range c.Buffers {
		where := "on every rank"
		if b.On == "root" {
			where = "on the root (the other ranks may pass nil: it is not used there)"
		}
		side := b.Role
		var what string
		switch b.Count {
		case "counts[rank]":
			what = fmt.Sprintf("%s[rank] elements", shared)
		case "sum(counts)":
			what = fmt.Sprintf("the sum of %s elements, block j (%s[j] elements) after block j-1", shared, shared)
		default:
			what = fmt.Sprintf("block j of %s[j] elements for every rank j", counts[side])
			if d, ok := displs[side]; ok {
				what += fmt.Sprintf(", at element %s[j] (%s nil: packed in rank order, and the buffer exactly their sum; else it may be longer)", d, d)
			}
		}
		parts = append(parts, fmt.Sprintf("%s holds %s %s", b.Name, what, where))
	}
	var cs []string
	for _, v := range c.Vectors {
		if !v.Displs {
			cs = append(cs, v.Name)
		}
	}
	agree := "every rank passes the same " + strings.Join(cs, " and ")
	if len(cs) > 1 {
		agree = fmt.Sprintf("%s[j] of rank i must equal %s[i] of rank j", cs[0], cs[1])
	}
	return fmt.Sprintf("With size the number of ranks and one count per rank: %s. Counts are checked across ranks (%s): a rank whose counts disagree makes the call fail with a *core.MismatchError on every rank. Blocks of one buffer must not overlap, and no buffer runs in place.",
		strings.Join(parts, "; "), agree)
}
