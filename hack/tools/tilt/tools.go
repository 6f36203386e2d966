//go:build tools

// Package tools records the command this wrapper module builds.
//
// Update with `go get github.com/tilt-dev/tilt/cmd/tilt@VERSION` (and copy
// tilt's replace directives), not `go mod tidy`: tidy also resolves packages
// that only tests of tilt's dependencies import, at their newest versions,
// which moves many of tilt's own pins.
package tools

import (
	_ "github.com/tilt-dev/tilt/cmd/tilt"
)
