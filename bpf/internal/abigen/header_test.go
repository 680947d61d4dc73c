package main

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const testHeader = `/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* File comment, not a type's. */
#pragma once
#define SL_LEN 4 /* a define's comment
		  * spanning lines */

/* Doc of sl_test.
 *
 * A second paragraph. */
struct sl_test {
	__u32	a;		/* trailing a */
	/* above b */
	__u32	b;
	/* above c,
	 * two lines */
	__u64	c;		/* and trailing c */
	__u8	pad[3];
	__u8	d[SL_LEN], e;	/* shared by d and e */
	__u32	f;		/* f */
	__u32	g;
	__u32	bits : 3;	/* a bitfield */
	__u64	aligned __attribute__((aligned(8))); // line comment
	union {
		__u32	u1;	/* inside a union */
	};
};

/* Separated by a blank line: not sl_after's doc. */

struct sl_after {
	__u32	x;
};

static inline int sl_fn(struct sl_test *t)
{
	struct sl_test copy = { .a = 1 };
	return copy.a + (int)sizeof(" }; ");
}

// Doc of sl_e,
// in line comments.
enum sl_e {
	SL_E_A	= 0, /* a */
	/* b, above */
	SL_E_B	= (1u << 2),
	SL_E_C	/* c, without a comma */
};
`

func TestHeaderDocs(t *testing.T) {
	docs := newHeaderDocs()
	if err := docs.add("test.h", testHeader); err != nil {
		t.Fatal(err)
	}
	want := &headerDocs{
		Structs: map[string]*cDecl{
			"sl_test": {
				Kind: "struct", Name: "sl_test", Pos: "test.h:10",
				Doc: "Doc of sl_test.\n\nA second paragraph.",
				Members: map[string]string{
					"a":       "trailing a",
					"b":       "above b",
					"c":       "above c, two lines\n\nand trailing c",
					"pad":     "",
					"d":       "shared by d and e",
					"e":       "shared by d and e",
					"f":       "f",
					"g":       "",
					"bits":    "a bitfield",
					"aligned": "line comment",
					"u1":      "inside a union",
				},
			},
			"sl_after": {
				Kind: "struct", Name: "sl_after", Pos: "test.h:30",
				Members: map[string]string{"x": ""},
			},
		},
		Enums: map[string]*cDecl{
			"sl_e": {
				Kind: "enum", Name: "sl_e", Pos: "test.h:42",
				Doc: "Doc of sl_e, in line comments.",
				Members: map[string]string{
					"SL_E_A": "a",
					"SL_E_B": "b, above",
					"SL_E_C": "c, without a comma",
				},
			},
		},
	}
	if diff := cmp.Diff(want, docs); diff != "" {
		t.Errorf("header docs (-want +got):\n%s", diff)
	}
}

func TestHeaderErrors(t *testing.T) {
	tests := []struct {
		name, src, want string
	}{
		{"unterminated comment", "struct sl_x { __u32 a; /* oops };", "unterminated comment"},
		{"missing brace", "struct sl_x { __u32 a;", "missing }"},
		{"duplicate member", "struct sl_x { __u32 a; __u32 a; };", "declared twice"},
		{"duplicate type", "enum sl_x { A }; enum sl_x { B };", "already defined"},
	}
	for _, tt := range tests {
		err := newHeaderDocs().add("t.h", tt.src)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %v, want one containing %q", tt.name, err, tt.want)
		}
	}
}

func TestCleanComments(t *testing.T) {
	tests := []struct {
		name string
		raw  []string
		want string
	}{
		{"one line", []string{"/* host order */"}, "host order"},
		{"leading star kept", []string{"/* *reason decides the packet */"}, "*reason decides the packet"},
		{"doc-style opener", []string{"/** a doc */"}, "a doc"},
		{"block", []string{"/* one\n * two\n *\n * three */"}, "one two\n\nthree"},
		{"closing on its own line", []string{"/*\n * text\n */"}, "text"},
		{"line comments", []string{"// one", "//two", "//", "// three"}, "one two\n\nthree"},
		{"white space", []string{"/*\tspaced    out\t*/"}, "spaced out"},
		{"empty", nil, ""},
	}
	for _, tt := range tests {
		if diff := cmp.Diff(tt.want, cleanComments(tt.raw)); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tt.name, diff)
		}
	}
}
