package main

import (
	"fmt"
	"strings"
)

// cDecl holds the comments of one struct or enum definition in a header.
type cDecl struct {
	// Kind is "struct" or "enum".
	Kind string
	// Name is the tag: sl_ct_key for struct sl_ct_key.
	Name string
	// Pos is "file:line" of the definition, for error messages.
	Pos string
	// Doc is the comment block directly above the definition.
	Doc string
	// Members maps member (or enumerator) names to their comments.
	Members map[string]string
}

// headerDocs are the definitions found in a set of headers, by tag.
type headerDocs struct {
	Structs map[string]*cDecl
	Enums   map[string]*cDecl
}

func newHeaderDocs() *headerDocs {
	return &headerDocs{Structs: map[string]*cDecl{}, Enums: map[string]*cDecl{}}
}

// add parses one header and records its struct and enum definitions. A tag
// defined twice is an error.
func (h *headerDocs) add(file, src string) error {
	toks, err := lex(src)
	if err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	p := parser{file: file, toks: toks}
	decls, err := p.definitions()
	if err != nil {
		return err
	}
	for _, d := range decls {
		table := h.Structs
		if d.Kind == "enum" {
			table = h.Enums
		}
		if prev, ok := table[d.Name]; ok {
			return fmt.Errorf("%s: %s %s already defined at %s", d.Pos, d.Kind, d.Name, prev.Pos)
		}
		table[d.Name] = d
	}
	return nil
}

type tokenKind int

const (
	tokIdent tokenKind = iota
	tokNumber
	tokString
	tokPunct
	tokComment
)

// token is a lexical element of a header. Preprocessor directives are
// dropped by the lexer, comments are kept.
type token struct {
	kind tokenKind
	text string
	// line and endLine are the 1-based lines the token starts and ends on.
	line, endLine int
	// first is set when nothing but white space precedes the token on its
	// line.
	first bool
}

// lex splits C source into tokens. It understands enough of C for struct
// and enum definitions: identifiers, numbers, string and character
// literals, punctuation, comments, and preprocessor lines (skipped).
func lex(src string) ([]token, error) {
	var toks []token
	line := 1
	lineStart := true // only white space so far on this line
	for i := 0; i < len(src); {
		c := src[i]
		switch {
		case c == '\n':
			line++
			lineStart = true
			i++
			continue
		case c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v':
			i++
			continue
		case c == '#' && lineStart:
			end, lines, err := skipDirective(src, i)
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", line, err)
			}
			i, line = end, line+lines
			continue
		}

		tok := token{line: line, first: lineStart}
		start := i
		switch {
		case strings.HasPrefix(src[i:], "/*"):
			end := strings.Index(src[i+2:], "*/")
			if end < 0 {
				return nil, fmt.Errorf("line %d: unterminated comment", line)
			}
			i += 2 + end + 2
			tok.kind = tokComment
		case strings.HasPrefix(src[i:], "//"):
			for i < len(src) && src[i] != '\n' {
				i++
			}
			tok.kind = tokComment
		case c == '"' || c == '\'':
			end, err := skipLiteral(src, i)
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", line, err)
			}
			i = end
			tok.kind = tokString
		case isIdentByte(c) && !isDigit(c):
			for i < len(src) && isIdentByte(src[i]) {
				i++
			}
			tok.kind = tokIdent
		case isDigit(c):
			// Good enough for literals in headers: digits, letters
			// (hex, suffixes) and dots.
			for i < len(src) && (isIdentByte(src[i]) || src[i] == '.') {
				i++
			}
			tok.kind = tokNumber
		default:
			i++
			tok.kind = tokPunct
		}
		tok.text = src[start:i]
		line += strings.Count(tok.text, "\n")
		tok.endLine = line
		toks = append(toks, tok)
		lineStart = false
	}
	return toks, nil
}

// skipDirective returns the end of the preprocessor directive at src[i],
// which runs to the first newline not escaped by a backslash and not inside
// a comment, and the number of newlines it consumed.
func skipDirective(src string, i int) (end, lines int, err error) {
	for i < len(src) {
		switch {
		case src[i] == '\n':
			return i, lines, nil
		case src[i] == '\\' && i+1 < len(src) && src[i+1] == '\n':
			i += 2
			lines++
		case strings.HasPrefix(src[i:], "/*"):
			end := strings.Index(src[i+2:], "*/")
			if end < 0 {
				return 0, 0, fmt.Errorf("unterminated comment in directive")
			}
			lines += strings.Count(src[i:i+2+end], "\n")
			i += 2 + end + 2
		case strings.HasPrefix(src[i:], "//"):
			for i < len(src) && src[i] != '\n' {
				i++
			}
		default:
			i++
		}
	}
	return i, lines, nil
}

// skipLiteral returns the end of the string or character literal at src[i].
func skipLiteral(src string, i int) (int, error) {
	quote := src[i]
	for i++; i < len(src); i++ {
		switch src[i] {
		case '\\':
			i++
		case quote:
			return i + 1, nil
		case '\n':
			return 0, fmt.Errorf("unterminated literal")
		}
	}
	return 0, fmt.Errorf("unterminated literal")
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func isIdentByte(c byte) bool {
	return c == '_' || isDigit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
}

// parser finds struct and enum definitions in a token stream.
type parser struct {
	file string
	toks []token
}

func (p *parser) pos(i int) string {
	return fmt.Sprintf("%s:%d", p.file, p.toks[i].line)
}

// next returns the index of the first non-comment token at or after i, or
// len(p.toks).
func (p *parser) next(i int) int {
	for i < len(p.toks) && p.toks[i].kind == tokComment {
		i++
	}
	return i
}

func (p *parser) is(i int, text string) bool {
	return i < len(p.toks) && p.toks[i].kind != tokComment && p.toks[i].text == text
}

// definitions returns every top-level "struct tag {" and "enum tag {"
// definition. Bodies of functions and anonymous structs are skipped.
func (p *parser) definitions() ([]*cDecl, error) {
	var decls []*cDecl
	depth := 0
	for i := 0; i < len(p.toks); i++ {
		t := p.toks[i]
		if t.kind == tokComment {
			continue
		}
		switch t.text {
		case "{", "(", "[":
			depth++
			continue
		case "}", ")", "]":
			depth--
			continue
		}
		if depth != 0 || (t.text != "struct" && t.text != "enum") {
			continue
		}
		name := p.next(i + 1)
		open := p.next(name + 1)
		if name >= len(p.toks) || p.toks[name].kind != tokIdent || !p.is(open, "{") {
			continue
		}
		d := &cDecl{
			Kind:    t.text,
			Name:    p.toks[name].text,
			Pos:     p.pos(i),
			Doc:     p.docAbove(i),
			Members: map[string]string{},
		}
		var end int
		var err error
		if d.Kind == "struct" {
			end, err = p.structBody(open+1, d)
		} else {
			end, err = p.enumBody(open+1, d)
		}
		if err != nil {
			return nil, err
		}
		decls = append(decls, d)
		i = end
	}
	return decls, nil
}

// structBody records the members of the struct or union body starting at
// i, just after its "{", and returns the index of its "}". Members of
// nested anonymous structs and unions are recorded in d too.
func (p *parser) structBody(i int, d *cDecl) (int, error) {
	for {
		i = p.next(i)
		if i >= len(p.toks) {
			return 0, fmt.Errorf("%s: %s %s: missing }", d.Pos, d.Kind, d.Name)
		}
		if p.is(i, "}") {
			return i, nil
		}
		end, names, err := p.declaration(i, d)
		if err != nil {
			return 0, err
		}
		doc := joinDocs(p.docAbove(i), p.docAfter(end))
		for _, name := range names {
			if _, dup := d.Members[name]; dup {
				return 0, fmt.Errorf("%s: member %s declared twice", p.pos(i), name)
			}
			d.Members[name] = doc
		}
		i = end + 1
	}
}

// declaration reads the member declaration starting at i up to its ";"
// and returns the index of the ";" and the declared names.
func (p *parser) declaration(i int, d *cDecl) (end int, names []string, err error) {
	depth := 0      // (), [] nesting
	var last string // last identifier of the current declarator
	done := false   // the current declarator's name is known
	for ; i < len(p.toks); i++ {
		t := p.toks[i]
		if t.kind == tokComment {
			continue
		}
		switch {
		case t.text == "{" && depth == 0:
			// A nested struct or union: its members are d's too.
			close, err := p.structBody(i+1, d)
			if err != nil {
				return 0, nil, err
			}
			// The declarator's name, if any, follows the body.
			i, last = close, ""
		case t.text == "(" || t.text == "[":
			if depth == 0 && last != "" {
				done = true
			}
			depth++
		case t.text == ")" || t.text == "]":
			depth--
		case depth > 0:
		case t.text == ":" || t.text == "=" || t.text == "__attribute__":
			done = true
		case t.text == "," || t.text == ";":
			if last != "" {
				names = append(names, last)
			}
			if t.text == ";" {
				return i, names, nil
			}
			last, done = "", false
		case t.kind == tokIdent && !done:
			last = t.text
		}
	}
	return 0, nil, fmt.Errorf("%s: %s %s: declaration without ;", d.Pos, d.Kind, d.Name)
}

// enumBody records the enumerators of the enum body starting at i, just
// after its "{", and returns the index of its "}".
func (p *parser) enumBody(i int, d *cDecl) (int, error) {
	for {
		i = p.next(i)
		if i >= len(p.toks) {
			return 0, fmt.Errorf("%s: enum %s: missing }", d.Pos, d.Name)
		}
		if p.is(i, "}") {
			return i, nil
		}
		if p.toks[i].kind != tokIdent {
			return 0, fmt.Errorf("%s: enum %s: unexpected %q", p.pos(i), d.Name, p.toks[i].text)
		}
		start, name := i, p.toks[i].text
		// The enumerator ends at a "," or, without one, before the "}".
		depth, last := 0, i
		for i++; i < len(p.toks); i++ {
			t := p.toks[i]
			if t.kind == tokComment {
				continue
			}
			if depth == 0 && (t.text == "," || t.text == "}") {
				break
			}
			switch t.text {
			case "(":
				depth++
			case ")":
				depth--
			}
			last = i
		}
		if p.is(i, ",") {
			last = i
			i++
		}
		if _, dup := d.Members[name]; dup {
			return 0, fmt.Errorf("%s: enumerator %s declared twice", p.pos(start), name)
		}
		d.Members[name] = joinDocs(p.docAbove(start), p.docAfter(last))
	}
}

// docAbove returns the comment block that ends on the line directly above
// token i: one or more comments, each alone at the start of its line, with
// no blank line between them and token i.
func (p *parser) docAbove(i int) string {
	want := p.toks[i].line - 1
	var parts []string
	for j := i - 1; j >= 0; j-- {
		t := p.toks[j]
		if t.kind != tokComment || !t.first || t.endLine != want {
			break
		}
		parts = append([]string{t.text}, parts...)
		want = t.line - 1
	}
	return cleanComments(parts)
}

// docAfter returns the comments that start on the line of token i, after
// it: a member's trailing comment.
func (p *parser) docAfter(i int) string {
	var parts []string
	for j := i + 1; j < len(p.toks); j++ {
		t := p.toks[j]
		if t.kind != tokComment || t.line != p.toks[i].endLine {
			break
		}
		parts = append(parts, t.text)
	}
	return cleanComments(parts)
}

// joinDocs puts the comment above a member before its trailing comment, as
// separate paragraphs.
func joinDocs(above, after string) string {
	switch {
	case above == "":
		return after
	case after == "":
		return above
	}
	return above + "\n\n" + after
}

// cleanComments turns raw C comments into text: comment markers and the
// leading " * " of block comment lines are removed, lines of a paragraph
// are joined with single spaces, and paragraphs are separated by "\n\n".
func cleanComments(raw []string) string {
	var lines []string
	for _, c := range raw {
		if body, ok := strings.CutPrefix(c, "//"); ok {
			lines = append(lines, body)
			continue
		}
		body := strings.TrimSuffix(strings.TrimPrefix(c, "/*"), "*/")
		for n, l := range strings.Split(body, "\n") {
			l = strings.TrimSpace(l)
			// Continuation lines start with " * ". The first line keeps
			// a star that begins its text ("*reason is set").
			if n > 0 || l == "*" || strings.HasPrefix(l, "* ") {
				l = strings.TrimPrefix(l, "*")
			}
			lines = append(lines, l)
		}
	}
	var paras []string
	var cur []string
	flush := func() {
		if len(cur) > 0 {
			paras = append(paras, strings.Join(cur, " "))
			cur = nil
		}
	}
	for _, l := range lines {
		words := strings.Fields(l)
		if len(words) == 0 {
			flush()
			continue
		}
		cur = append(cur, strings.Join(words, " "))
	}
	flush()
	return strings.Join(paras, "\n\n")
}
