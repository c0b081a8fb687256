package rds_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	rds "github.com/run-dat-sheesh/rds/sdk/go"
)

// The suite runs against a live manager: $RDS_URL and $RDS_API_KEY (scripts/test starts one).
func TestMain(m *testing.M) {
	if os.Getenv("RDS_URL") == "" || os.Getenv("RDS_API_KEY") == "" {
		os.Stderr.WriteString("set RDS_URL and RDS_API_KEY to a running rds serve\n")
		os.Exit(2)
	}
	os.Exit(m.Run())
}

func setup(t *testing.T) (context.Context, *rds.Client, *rds.Sandbox) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	c := rds.NewClient("", "")
	sb, err := rds.CreateSandbox(ctx, c, rds.CreateVM{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sb.Kill(context.Background()) })
	return ctx, c, sb
}

// must is v, or a panic (which fails the test with its stack) on err.
func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func noErr(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestExecRunAndStream(t *testing.T) {
	ctx, c, sb := setup(t)
	r := must(sb.Exec(ctx, "echo hello; id -u; echo oops >&2; exit 3"))
	if r.Stdout != "hello\n1000\n" || r.Stderr != "oops\n" || r.Code() != 3 {
		t.Fatalf("%+v", r)
	}
	stdin := "fed"
	if r := must(c.Exec(ctx, sb.ID(), rds.Exec{Cmd: "cat", Stdin: &stdin})); r.Stdout != "fed" {
		t.Fatalf("%+v", r)
	}
	var sum struct{ Sum int }
	py := must(sb.RunPython(ctx, "result = {'Sum': 1 + 2}"))
	if err := py.Decode(&sum); err != nil || sum.Sum != 3 {
		t.Fatalf("%s %v", py.Result, err)
	}
	if ts := must(sb.RunTS(ctx, "result.set([1, 2].map((x: number) => x * 2))")); string(ts.Result) != "[2,4]" {
		t.Fatalf("%s", ts.Result)
	}
	var seen []string
	exit := must(sb.ExecStream(ctx, "echo a; echo b >&2; exit 2", func(e rds.ExecEvent) error {
		seen = append(seen, e.Type+":"+e.Data)
		return nil
	}))
	if !reflect.DeepEqual(seen, []string{"stdout:a\n", "stderr:b\n"}) || exit.ExitCode == nil || *exit.ExitCode != 2 {
		t.Fatalf("%q %+v", seen, exit)
	}
	vms := must(c.ListVMs(ctx))
	found := false
	for _, vm := range vms {
		found = found || vm.ID == sb.ID()
	}
	if !found {
		t.Fatal("the VM is not listed")
	}
	if err := sb.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetVM(ctx, sb.ID()); !errors.Is(err, rds.ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
}

func TestFilesRoundTrip(t *testing.T) {
	ctx, _, sb := setup(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	blob := bytes.Repeat([]byte{0, 1, 2, 250, 251}, 1000)
	noErr(t, os.MkdirAll(filepath.Join(src, "pkg", "deep"), 0o755))
	noErr(t, os.WriteFile(filepath.Join(src, "top.txt"), []byte("top\n"), 0o644))
	noErr(t, os.WriteFile(filepath.Join(src, "pkg", "deep", "data.bin"), blob, 0o644))
	noErr(t, sb.UploadDir(ctx, src, "/workspace/project"))
	listed := must(sb.Exec(ctx, "cd /workspace/project && find . -type f | sort && stat -c %U top.txt"))
	if listed.Stdout != "./pkg/deep/data.bin\n./top.txt\nuser\n" {
		t.Fatalf("%q", listed.Stdout)
	}
	written := must(sb.DownloadDir(ctx, "/workspace/project", filepath.Join(dir, "back")))
	sort.Strings(written)
	if !reflect.DeepEqual(written, []string{"pkg/deep/data.bin", "top.txt"}) {
		t.Fatalf("%q", written)
	}
	if back := must(os.ReadFile(filepath.Join(dir, "back", "pkg", "deep", "data.bin"))); !bytes.Equal(back, blob) {
		t.Fatal("the file changed on the way")
	}
	noErr(t, sb.WriteFile(ctx, "/workspace/notes/hello.txt", []byte("from go\n")))
	if got := must(sb.ReadFile(ctx, "/workspace/notes/hello.txt")); string(got) != "from go\n" {
		t.Fatalf("%q", got)
	}
}

func TestCodeContextsKeepState(t *testing.T) {
	ctx, c, sb := setup(t)
	cc := must(sb.Context(ctx, "python"))
	must(cc.Run(ctx, "count = 41"))
	if r := must(cc.Run(ctx, "count += 1\nresult = count")); string(r.Result) != "42" {
		t.Fatalf("%s", r.Result)
	}
	noErr(t, cc.Restart(ctx))
	if r := must(cc.Run(ctx, "result = 'count' in globals()")); string(r.Result) != "false" {
		t.Fatalf("%s", r.Result)
	}
	noErr(t, cc.Delete(ctx))
	if cs := must(c.ListContexts(ctx, sb.ID())); len(cs) != 0 {
		t.Fatalf("%+v", cs)
	}
}

func TestSnapshotsStartNewVMs(t *testing.T) {
	ctx, c, sb := setup(t)
	noErr(t, sb.WriteFile(ctx, "/workspace/state.txt", []byte("kept\n")))
	snap := must(sb.Snapshot(ctx))
	defer c.DeleteSnapshot(context.Background(), snap.ID)
	if got := must(c.GetSnapshot(ctx, snap.ID)); got.ID != snap.ID || got.SourceVMID == nil || *got.SourceVMID != sb.ID() {
		t.Fatalf("%+v", got)
	}
	restored := must(rds.CreateSandbox(ctx, c, rds.CreateVM{SnapshotID: snap.ID}))
	defer restored.Kill(context.Background())
	if got := must(restored.ReadFile(ctx, "/workspace/state.txt")); string(got) != "kept\n" {
		t.Fatalf("%q", got)
	}
}

func TestSecretsAndPeers(t *testing.T) {
	ctx := context.Background()
	c := rds.NewClient("", "")
	provider := must(rds.CreateSandbox(ctx, c, rds.CreateVM{SecretEnv: []string{"GO_TOKEN=go-s3cr3t-value"}}))
	defer provider.Kill(ctx)
	if r := must(provider.Exec(ctx, `echo "t=$GO_TOKEN"`)); r.Stdout != "t=[redacted:GO_TOKEN]\n" {
		t.Fatalf("%q", r.Stdout)
	}
	manifest := `{"sdk": {"name": "calc", "description": "adds"}, "exports": [{"name": "add", "module": "calc.py", "description": "a + b"}]}`
	noErr(t, provider.WriteFile(ctx, "/workspace/.rds-peer/manifest.json", []byte(manifest)))
	noErr(t, provider.WriteFile(ctx, "/workspace/calc.py", []byte("def add(args):\n    return args['a'] + args['b']\n")))
	consumer := must(rds.CreateSandbox(ctx, c, rds.CreateVM{PeerLinks: []rds.PeerLink{{Alias: "calc", VMID: provider.ID()}}}))
	defer consumer.Kill(ctx)
	if r := must(consumer.RunPython(ctx, "from peers import calc\nresult = calc.add(a=2, b=3)")); string(r.Result) != "5" {
		t.Fatalf("%s %s", r.Result, r.Stderr)
	}
	noErr(t, c.DeletePeerLink(ctx, consumer.ID(), "calc"))
	if peers := must(c.ListPeers(ctx, consumer.ID())); len(peers) != 0 {
		t.Fatalf("%v", peers)
	}
}

func TestErrorsAreTyped(t *testing.T) {
	ctx, c, sb := setup(t)
	_, err := c.CreateVM(ctx, rds.CreateVM{CPU: -1})
	var e *rds.Error
	if !errors.As(err, &e) || !errors.Is(err, rds.ErrBadRequest) || !strings.Contains(e.Message, "cpu") {
		t.Fatalf("%v", err)
	}
	if _, err := c.Exec(ctx, "no-such-vm", rds.Exec{Cmd: "true"}); !errors.Is(err, rds.ErrNotFound) {
		t.Fatalf("%v", err)
	}
	if _, err := rds.NewClient(c.URL, "not-the-key").ListVMs(ctx); !errors.Is(err, rds.ErrUnauthorized) {
		t.Fatalf("%v", err)
	}
	noErr(t, sb.Stop(ctx))
	if _, err := sb.Exec(ctx, "true"); !errors.Is(err, rds.ErrConflict) {
		t.Fatalf("%v", err)
	}
	noErr(t, sb.Start(ctx))
	if r := must(sb.Exec(ctx, "echo back")); r.Stdout != "back\n" {
		t.Fatalf("%q", r.Stdout)
	}
}

// losesFirstExecAnswer forwards everything but drops the answer to the first exec after it ran.
type losesFirstExecAnswer struct{ bodies []string }

func (l *losesFirstExecAnswer) RoundTrip(req *http.Request) (*http.Response, error) {
	var body []byte
	if req.Body != nil {
		body, _ = readBody(req)
	}
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err == nil && strings.HasSuffix(req.URL.Path, "/exec") {
		l.bodies = append(l.bodies, string(body))
		if len(l.bodies) == 1 {
			resp.Body.Close()
			return nil, errors.New("connection lost")
		}
	}
	return resp, err
}

func TestARetriedExecRunsOnce(t *testing.T) {
	ctx, c, sb := setup(t)
	flaky := &losesFirstExecAnswer{}
	fc := rds.NewClient(c.URL, c.APIKey)
	fc.HTTP = &http.Client{Transport: flaky}
	r := must(fc.Exec(ctx, sb.ID(), rds.Exec{Cmd: "echo ran >> /workspace/count; wc -l < /workspace/count"}))
	if strings.TrimSpace(r.Stdout) != "1" || len(flaky.bodies) != 2 || flaky.bodies[0] != flaky.bodies[1] {
		t.Fatalf("%q %q", r.Stdout, flaky.bodies)
	}
	if r := must(sb.Exec(ctx, "cat /workspace/count")); r.Stdout != "ran\n" {
		t.Fatalf("%q", r.Stdout)
	}
}

func TestAPIKeysAreCreatedUsedAndRevoked(t *testing.T) {
	ctx := context.Background()
	c := rds.NewClient("", "")
	created := must(c.CreateAPIKey(ctx, "go sdk test", 1))
	holder := rds.NewClient(c.URL, created["key"].(string))
	must(holder.ListVMs(ctx))
	noErr(t, c.RevokeAPIKey(ctx, created["id"].(string)))
	if _, err := holder.ListVMs(ctx); !errors.Is(err, rds.ErrUnauthorized) {
		t.Fatalf("a revoked key: %v", err)
	}
}

func TestEveryOperationIsCoveredOrListedMissing(t *testing.T) {
	resp := must(http.Get(rds.NewClient("", "").URL + "/openapi.json"))
	defer resp.Body.Close()
	var spec struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	noErr(t, json.NewDecoder(resp.Body).Decode(&spec))
	ops := map[string]bool{}
	for path, item := range spec.Paths {
		for method := range item {
			ops[strings.ToUpper(method)+" "+path] = true
		}
	}
	client := reflect.TypeOf(&rds.Client{})
	for op := range ops {
		method, covered := rds.Operations[op]
		_, missing := rds.Missing[op]
		if !covered && !missing {
			t.Errorf("%s is neither implemented nor listed as missing", op)
		}
		if covered {
			if _, ok := client.MethodByName(method); !ok {
				t.Errorf("%s: Client has no method %s", op, method)
			}
		}
	}
	for op := range rds.Operations {
		if !ops[op] {
			t.Errorf("%s is listed but the API has no such operation", op)
		}
	}
}

// The README's Go examples are the Example functions of example_test.go, which `go test` runs.
func TestReadmeExamplesAreTheTestedOnes(t *testing.T) {
	readme := string(must(os.ReadFile("README.md")))
	examples := string(must(os.ReadFile("example_test.go")))
	blocks := regexp.MustCompile("(?s)```go\n(.*?)```").FindAllStringSubmatch(readme, -1)
	if len(blocks) < 2 {
		t.Fatal("the README has no Go examples")
	}
	for _, b := range blocks {
		if !strings.Contains(examples, b[1]) {
			t.Errorf("a README example is not in example_test.go:\n%s", b[1])
		}
	}
}
