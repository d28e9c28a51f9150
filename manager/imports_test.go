package manager_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDataPathDoesNotImportManager keeps the dependency direction: the
// data-path packages never depend on the Manager (they satisfy
// agent.Target instead).
func TestDataPathDoesNotImportManager(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command:", err)
	}
	for _, pkg := range []string{"mux", "hostagent", "snat", "consensus/..."} {
		out, err := exec.Command("go", "list", "-deps", "github.com/ananta-go/ananta/"+pkg).CombinedOutput()
		if err != nil {
			if strings.Contains(string(out), "matched no packages") || strings.Contains(string(out), "cannot find") {
				t.Logf("%s: %s", pkg, out)
				continue
			}
			t.Fatalf("go list %s: %v\n%s", pkg, err, out)
		}
		for _, dep := range strings.Fields(string(out)) {
			if dep == "github.com/ananta-go/ananta/manager" || strings.HasPrefix(dep, "github.com/ananta-go/ananta/manager/") {
				t.Errorf("%s depends on %s", pkg, dep)
			}
		}
	}
}
