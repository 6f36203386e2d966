//go:build tools

// Package tools records the command this wrapper module builds.
//
// Update with `go get github.com/cert-manager/cert-manager/cmd/controller@VERSION`
// (and copy cert-manager's replace directives), not `go mod tidy`: tidy also
// resolves packages that only tests of cert-manager's dependencies import,
// at their newest versions, which moves cert-manager's own pins.
package tools

import (
	_ "github.com/cert-manager/cert-manager/cmd/controller"
)
