package tracing_test

import (
	"os/exec"
	"strings"
	"testing"
)

// Only an application that imports tracing compiles OpenTelemetry: the
// service, rest and upstream never import it.
func TestTheOthersDoNotImportOpenTelemetry(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command")
	}
	pkgs := []string{"github.com/embedwps/pubsub", "github.com/embedwps/pubsub/rest", "github.com/embedwps/pubsub/upstream"}
	out, err := exec.Command(goTool, append([]string{"list", "-deps"}, pkgs...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, p := range strings.Fields(string(out)) {
		if strings.HasPrefix(p, "go.opentelemetry.io/") {
			t.Fatalf("%v depend on %s", pkgs, p)
		}
	}
}
