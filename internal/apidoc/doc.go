// Package apidoc holds the tests that keep sluice's API documentation
// whole: every exported name of a public package has a doc comment, and
// docs/kernel-features.md is the "Kernel features" sections of the
// packages' doc comments, generated from them (SLUICE_UPDATE_DOCS=1 go test
// ./internal/apidoc/ rewrites it).
package apidoc
