package ananta_test

import (
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

const modulePath = "github.com/ananta-go/ananta"

// goPackages returns every directory of the module that holds Go files,
// relative to the module root, skipping testdata and hidden directories.
func goPackages(t *testing.T) []string {
	t.Helper()
	var dirs []string
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			base := d.Name()
			if path != "." && (strings.HasPrefix(base, ".") || strings.HasPrefix(base, "_") || base == "testdata") {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(path, ".go") {
			if dir := filepath.Dir(path); !slices.Contains(dirs, dir) {
				dirs = append(dirs, dir)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return dirs
}

// TestEveryPackageHasOneDocComment: each package documents itself exactly
// once, in its non-test files.
func TestEveryPackageHasOneDocComment(t *testing.T) {
	for _, dir := range goPackages(t) {
		pkgs, err := parser.ParseDir(token.NewFileSet(), dir, func(fi fs.FileInfo) bool {
			return !strings.HasSuffix(fi.Name(), "_test.go")
		}, parser.PackageClauseOnly|parser.ParseComments)
		if err != nil {
			t.Fatalf("%s: %v", dir, err)
		}
		for name, pkg := range pkgs {
			var with []string
			for file, f := range pkg.Files {
				if f.Doc != nil {
					with = append(with, filepath.Base(file))
				}
			}
			if len(with) != 1 {
				t.Errorf("package %s in %s has %d package doc comments (%v), want exactly 1", name, dir, len(with), with)
			}
		}
	}
}

// TestLeafPackagesImportOnlyRoot keeps the dependency direction of
// docs/architecture.md: the pure packages import nothing of the project but
// the root types (their tests may also use internal/testutil).
func TestLeafPackagesImportOnlyRoot(t *testing.T) {
	leaves := []string{"hashring", "encap", "snat", "fastpath"}
	for _, leaf := range leaves {
		if _, err := os.Stat(leaf); os.IsNotExist(err) {
			t.Logf("%s does not exist yet", leaf)
			continue
		}
		pkgs, err := parser.ParseDir(token.NewFileSet(), leaf, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatalf("%s: %v", leaf, err)
		}
		for _, pkg := range pkgs {
			for file, f := range pkg.Files {
				isTest := strings.HasSuffix(file, "_test.go")
				for _, imp := range f.Imports {
					path, _ := strconv.Unquote(imp.Path.Value)
					if path == modulePath || !strings.HasPrefix(path, modulePath+"/") {
						continue
					}
					if isTest && (path == modulePath+"/internal/testutil" || path == modulePath+"/"+leaf) {
						continue
					}
					t.Errorf("%s imports %s; %s may import only the root package", file, path, leaf)
				}
			}
		}
	}
}
