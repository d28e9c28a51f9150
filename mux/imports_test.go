package mux

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestImports keeps the data path off the control plane: mux imports only
// the root package, hashring, encap, packetio and routing (the Announcer
// interface) of this module (its tests
// also internal/testutil), never manager or anything else.
func TestImports(t *testing.T) {
	const module = "github.com/ananta-go/ananta"
	allowed := map[string]bool{module: true, module + "/hashring": true, module + "/encap": true, module + "/packetio": true, module + "/routing": true}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range files {
		f, err := parser.ParseFile(token.NewFileSet(), name, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			if !strings.HasPrefix(path, module) || allowed[path] || (path == module+"/internal/testutil" && strings.HasSuffix(name, "_test.go")) || path == module+"/mux" {
				continue
			}
			t.Errorf("%s imports %s", name, path)
		}
	}
}
