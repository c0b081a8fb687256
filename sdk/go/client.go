// Package rds is the Go client of run-dat-sheesh (rds): create sandboxes (microVMs), run
// commands and code in them, move files, keep interpreter state, snapshot them.
//
//	c := rds.NewClient("", "") // $RDS_URL, $RDS_API_KEY
//	sb, err := rds.CreateSandbox(ctx, c, rds.CreateVM{})
//	if err != nil { ... }
//	defer sb.Kill(context.Background())
//	res, err := sb.Exec(ctx, "echo hello")
//
// Every call takes a context.Context. Exec and run calls carry an execId (generated unless set),
// so a call whose connection failed is retried safely: the manager joins the first attempt
// instead of running it twice.
package rds

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// Client talks to one manager. The zero value is not usable; use NewClient.
type Client struct {
	URL     string
	APIKey  string
	HTTP    *http.Client
	Retries int // retries of calls safe to repeat (GETs, exec and runs with their execId)
}

// NewClient returns a client for the manager at url with apiKey; empty values come from
// RDS_URL (default http://127.0.0.1:3000) and RDS_API_KEY.
func NewClient(baseURL, apiKey string) *Client {
	if baseURL == "" {
		baseURL = os.Getenv("RDS_URL")
	}
	if baseURL == "" {
		baseURL = "http://127.0.0.1:3000"
	}
	if apiKey == "" {
		apiKey = os.Getenv("RDS_API_KEY")
	}
	return &Client{URL: strings.TrimRight(baseURL, "/"), APIKey: apiKey, HTTP: &http.Client{}, Retries: 2}
}

type call struct {
	method, path string
	query        url.Values
	json         any
	body         []byte
	contentType  string
	accept       string
	retry        bool
}

func newID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// send performs c and returns the successful response (the caller closes its body).
func (cl *Client) send(ctx context.Context, c call) (*http.Response, error) {
	body := c.body
	contentType := c.contentType
	if c.json != nil {
		var err error
		if body, err = json.Marshal(c.json); err != nil {
			return nil, err
		}
		contentType = "application/json"
	}
	target := cl.URL + c.path
	if len(c.query) > 0 {
		target += "?" + c.query.Encode()
	}
	attempts := 1
	if c.retry {
		attempts += cl.Retries
	}
	for attempt := 0; ; attempt++ {
		req, err := http.NewRequestWithContext(ctx, c.method, target, bytes.NewReader(body))
		if err != nil {
			return nil, err
		}
		req.Header.Set("X-API-Key", cl.APIKey)
		if contentType != "" {
			req.Header.Set("Content-Type", contentType)
		}
		if c.accept != "" {
			req.Header.Set("Accept", c.accept)
		}
		resp, err := cl.HTTP.Do(req)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if attempt+1 >= attempts {
				return nil, &Error{Status: 0, Code: "connection", Message: err.Error()}
			}
			select {
			case <-time.After(time.Duration(200<<attempt) * time.Millisecond):
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			continue
		}
		if resp.StatusCode >= 400 {
			defer resp.Body.Close()
			data, _ := io.ReadAll(resp.Body)
			return nil, errorOf(resp, data)
		}
		return resp, nil
	}
}

// do performs c and decodes a JSON answer into out (when not nil).
func (cl *Client) do(ctx context.Context, c call, out any) error {
	resp, err := cl.send(ctx, c)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		return err
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

func (cl *Client) bytes(ctx context.Context, c call) ([]byte, error) {
	resp, err := cl.send(ctx, c)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(resp.Body)
}

func esc(s string) string { return url.PathEscape(s) }

// Health is GET /v1/health.
func (cl *Client) Health(ctx context.Context) (*Health, error) {
	var h Health
	return &h, cl.do(ctx, call{method: "GET", path: "/v1/health", retry: true}, &h)
}

// CreateVM is POST /v1/vms: a RUNNING VM.
func (cl *Client) CreateVM(ctx context.Context, req CreateVM) (*VM, error) {
	if req.CPU == 0 {
		req.CPU = 1
	}
	if req.MemMB == 0 {
		req.MemMB = 256
	}
	var vm VM
	return &vm, cl.do(ctx, call{method: "POST", path: "/v1/vms", json: req}, &vm)
}

// ListVMs is GET /v1/vms.
func (cl *Client) ListVMs(ctx context.Context) ([]VM, error) {
	var vms []VM
	return vms, cl.do(ctx, call{method: "GET", path: "/v1/vms", retry: true}, &vms)
}

// GetVM is GET /v1/vms/{id}.
func (cl *Client) GetVM(ctx context.Context, id string) (*VM, error) {
	var vm VM
	return &vm, cl.do(ctx, call{method: "GET", path: "/v1/vms/" + esc(id), retry: true}, &vm)
}

// StartVM is POST /v1/vms/{id}/start: boots a STOPPED VM, its workspace kept.
func (cl *Client) StartVM(ctx context.Context, id string) error {
	return cl.do(ctx, call{method: "POST", path: "/v1/vms/" + esc(id) + "/start"}, nil)
}

// StopVM is POST /v1/vms/{id}/stop: shuts it down, keeping its workspace.
func (cl *Client) StopVM(ctx context.Context, id string) error {
	return cl.do(ctx, call{method: "POST", path: "/v1/vms/" + esc(id) + "/stop"}, nil)
}

// DeleteVM is DELETE /v1/vms/{id}.
func (cl *Client) DeleteVM(ctx context.Context, id string) error {
	return cl.do(ctx, call{method: "DELETE", path: "/v1/vms/" + esc(id)}, nil)
}

// Logs is GET /v1/vms/{id}/logs (logType "" for the console; tail 0 for the default).
func (cl *Client) Logs(ctx context.Context, id, logType string, tail int) (map[string]any, error) {
	q := url.Values{}
	if logType != "" {
		q.Set("type", logType)
	}
	if tail > 0 {
		q.Set("tail", fmt.Sprint(tail))
	}
	var out map[string]any
	return out, cl.do(ctx, call{method: "GET", path: "/v1/vms/" + esc(id) + "/logs", query: q, retry: true}, &out)
}

// ExecLogs is GET /v1/vms/{id}/exec-logs.
func (cl *Client) ExecLogs(ctx context.Context, id string, limit int) (map[string]any, error) {
	q := url.Values{}
	if limit > 0 {
		q.Set("limit", fmt.Sprint(limit))
	}
	var out map[string]any
	return out, cl.do(ctx, call{method: "GET", path: "/v1/vms/" + esc(id) + "/exec-logs", query: q, retry: true}, &out)
}

// Exec is POST /v1/vms/{id}/exec: a shell command as uid 1000 in /workspace.
func (cl *Client) Exec(ctx context.Context, id string, req Exec) (*ExecResult, error) {
	if req.ExecID == "" {
		req.ExecID = newID()
	}
	var r ExecResult
	return &r, cl.do(ctx, call{method: "POST", path: "/v1/vms/" + esc(id) + "/exec", json: req, retry: true}, &r)
}

// ExecStream runs a command and calls onEvent with its output as it comes; it returns the final
// "exit" event. An error from onEvent stops reading (the command still runs to its end).
func (cl *Client) ExecStream(ctx context.Context, id string, req Exec, onEvent func(ExecEvent) error) (*ExecEvent, error) {
	if req.ExecID == "" {
		req.ExecID = newID()
	}
	resp, err := cl.send(ctx, call{method: "POST", path: "/v1/vms/" + esc(id) + "/exec", json: req, accept: "application/x-ndjson"})
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	scanner := bufio.NewScanner(resp.Body)
	scanner.Buffer(make([]byte, 64<<10), 32<<20)
	for scanner.Scan() {
		if len(bytes.TrimSpace(scanner.Bytes())) == 0 {
			continue
		}
		var ev ExecEvent
		if err := json.Unmarshal(scanner.Bytes(), &ev); err != nil {
			return nil, err
		}
		if ev.Type == "exit" {
			return &ev, nil
		}
		if onEvent != nil {
			if err := onEvent(ev); err != nil {
				return nil, err
			}
		}
	}
	if err := scanner.Err(); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("the exec stream ended without its exit event")
}

func (cl *Client) run(ctx context.Context, route, id string, req Run) (*RunResult, error) {
	if req.ExecID == "" {
		req.ExecID = newID()
	}
	var r RunResult
	return &r, cl.do(ctx, call{method: "POST", path: "/v1/vms/" + esc(id) + "/" + route, json: req, retry: true}, &r)
}

// RunTS is POST /v1/vms/{id}/run-ts: TypeScript under Deno; result.set(value) is the result.
func (cl *Client) RunTS(ctx context.Context, id string, req Run) (*RunResult, error) {
	return cl.run(ctx, "run-ts", id, req)
}

// RunJS is POST /v1/vms/{id}/run-js: JavaScript under Node.js.
func (cl *Client) RunJS(ctx context.Context, id string, req Run) (*RunResult, error) {
	return cl.run(ctx, "run-js", id, req)
}

// RunPython is POST /v1/vms/{id}/run-python: assign result to return a value.
func (cl *Client) RunPython(ctx context.Context, id string, req Run) (*RunResult, error) {
	return cl.run(ctx, "run-python", id, req)
}

// CreateContext is POST /v1/vms/{id}/contexts.
func (cl *Client) CreateContext(ctx context.Context, id string, req CreateContext) (*Context, error) {
	var c Context
	return &c, cl.do(ctx, call{method: "POST", path: "/v1/vms/" + esc(id) + "/contexts", json: req}, &c)
}

// ListContexts is GET /v1/vms/{id}/contexts.
func (cl *Client) ListContexts(ctx context.Context, id string) ([]Context, error) {
	var cs []Context
	return cs, cl.do(ctx, call{method: "GET", path: "/v1/vms/" + esc(id) + "/contexts", retry: true}, &cs)
}

// GetContext is GET /v1/vms/{id}/contexts/{contextId}.
func (cl *Client) GetContext(ctx context.Context, id, contextID string) (*Context, error) {
	var c Context
	return &c, cl.do(ctx, call{method: "GET", path: "/v1/vms/" + esc(id) + "/contexts/" + esc(contextID), retry: true}, &c)
}

// RestartContext is POST /v1/vms/{id}/contexts/{contextId}/restart: drops its state.
func (cl *Client) RestartContext(ctx context.Context, id, contextID string) (*Context, error) {
	var c Context
	return &c, cl.do(ctx, call{method: "POST", path: "/v1/vms/" + esc(id) + "/contexts/" + esc(contextID) + "/restart"}, &c)
}

// DeleteContext is DELETE /v1/vms/{id}/contexts/{contextId}.
func (cl *Client) DeleteContext(ctx context.Context, id, contextID string) error {
	return cl.do(ctx, call{method: "DELETE", path: "/v1/vms/" + esc(id) + "/contexts/" + esc(contextID)}, nil)
}

// Upload is POST /v1/vms/{id}/files/upload: unpacks a tar.gz under dest in the workspace.
func (cl *Client) Upload(ctx context.Context, id string, archive []byte, dest string) error {
	if dest == "" {
		dest = "/workspace"
	}
	q := url.Values{"dest": {dest}}
	return cl.do(ctx, call{method: "POST", path: "/v1/vms/" + esc(id) + "/files/upload", query: q, body: archive, contentType: "application/gzip"}, nil)
}

// Download is GET /v1/vms/{id}/files/download: path as a tar.gz.
func (cl *Client) Download(ctx context.Context, id, path string) ([]byte, error) {
	q := url.Values{"path": {path}}
	return cl.bytes(ctx, call{method: "GET", path: "/v1/vms/" + esc(id) + "/files/download", query: q, retry: true})
}

// CreateSnapshot is POST /v1/vms/{id}/snapshots (includeMemory nil: the manager decides).
func (cl *Client) CreateSnapshot(ctx context.Context, id string, includeMemory *bool) (*Snapshot, error) {
	body := map[string]any{}
	if includeMemory != nil {
		body["includeMemory"] = *includeMemory
	}
	var s Snapshot
	return &s, cl.do(ctx, call{method: "POST", path: "/v1/vms/" + esc(id) + "/snapshots", json: body}, &s)
}

// ListSnapshots is GET /v1/snapshots (scope "", "user", "internal" or "all").
func (cl *Client) ListSnapshots(ctx context.Context, scope string) ([]Snapshot, error) {
	q := url.Values{}
	if scope != "" {
		q.Set("scope", scope)
	}
	var ss []Snapshot
	return ss, cl.do(ctx, call{method: "GET", path: "/v1/snapshots", query: q, retry: true}, &ss)
}

// GetSnapshot is GET /v1/snapshots/{id}.
func (cl *Client) GetSnapshot(ctx context.Context, snapshotID string) (*Snapshot, error) {
	var s Snapshot
	return &s, cl.do(ctx, call{method: "GET", path: "/v1/snapshots/" + esc(snapshotID), retry: true}, &s)
}

// DeleteSnapshot is DELETE /v1/snapshots/{id}.
func (cl *Client) DeleteSnapshot(ctx context.Context, snapshotID string) error {
	return cl.do(ctx, call{method: "DELETE", path: "/v1/snapshots/" + esc(snapshotID)}, nil)
}

// ListImages is GET /v1/images.
func (cl *Client) ListImages(ctx context.Context) ([]Image, error) {
	var is []Image
	return is, cl.do(ctx, call{method: "GET", path: "/v1/images", retry: true}, &is)
}

// GetImage is GET /v1/images/{id}.
func (cl *Client) GetImage(ctx context.Context, imageID string) (*Image, error) {
	var i Image
	return &i, cl.do(ctx, call{method: "GET", path: "/v1/images/" + esc(imageID), retry: true}, &i)
}

// CreateImage is POST /v1/images: an empty image to upload parts to.
func (cl *Client) CreateImage(ctx context.Context, name, description string) (*Image, error) {
	body := map[string]string{"name": name}
	if description != "" {
		body["description"] = description
	}
	var i Image
	return &i, cl.do(ctx, call{method: "POST", path: "/v1/images", json: body}, &i)
}

// DeleteImage is DELETE /v1/images/{id}.
func (cl *Client) DeleteImage(ctx context.Context, imageID string) error {
	return cl.do(ctx, call{method: "DELETE", path: "/v1/images/" + esc(imageID)}, nil)
}

// SetDefaultImage is POST /v1/images/{id}/set-default.
func (cl *Client) SetDefaultImage(ctx context.Context, imageID string) error {
	return cl.do(ctx, call{method: "POST", path: "/v1/images/" + esc(imageID) + "/set-default"}, nil)
}

func (cl *Client) putPart(ctx context.Context, imageID, part string, data []byte, contentType string) (*Image, error) {
	var i Image
	return &i, cl.do(ctx, call{method: "PUT", path: "/v1/images/" + esc(imageID) + "/" + part, body: data, contentType: contentType}, &i)
}

// UploadKernel is PUT /v1/images/{id}/kernel.
func (cl *Client) UploadKernel(ctx context.Context, imageID string, data []byte) (*Image, error) {
	return cl.putPart(ctx, imageID, "kernel", data, "application/octet-stream")
}

// UploadRootfs is PUT /v1/images/{id}/rootfs.
func (cl *Client) UploadRootfs(ctx context.Context, imageID string, data []byte) (*Image, error) {
	return cl.putPart(ctx, imageID, "rootfs", data, "application/octet-stream")
}

// UploadInitrd is PUT /v1/images/{id}/initrd.
func (cl *Client) UploadInitrd(ctx context.Context, imageID string, data []byte) (*Image, error) {
	return cl.putPart(ctx, imageID, "initrd", data, "application/octet-stream")
}

// UploadBundle is PUT /v1/images/{id}/bundle: a tar.gz of `rds image build`'s output.
func (cl *Client) UploadBundle(ctx context.Context, imageID string, data []byte) (*Image, error) {
	return cl.putPart(ctx, imageID, "bundle", data, "application/gzip")
}

// UpdateNetwork is PATCH /v1/vms/{id}/network.
func (cl *Client) UpdateNetwork(ctx context.Context, id string, policy NetworkPolicy) (*VM, error) {
	var vm VM
	return &vm, cl.do(ctx, call{method: "PATCH", path: "/v1/vms/" + esc(id) + "/network", json: policy}, &vm)
}

// ListPeers is GET /v1/vms/{id}/peers.
func (cl *Client) ListPeers(ctx context.Context, id string) ([]map[string]any, error) {
	var out []map[string]any
	return out, cl.do(ctx, call{method: "GET", path: "/v1/vms/" + esc(id) + "/peers", retry: true}, &out)
}

// SetPeerLink is PATCH /v1/vms/{id}/peers/{alias}: links (or relinks) a provider.
func (cl *Client) SetPeerLink(ctx context.Context, id, alias, providerID, sourceMode string) (map[string]any, error) {
	body := map[string]string{}
	if providerID != "" {
		body["vmId"] = providerID
	}
	if sourceMode != "" {
		body["sourceMode"] = sourceMode
	}
	var out map[string]any
	return out, cl.do(ctx, call{method: "PATCH", path: "/v1/vms/" + esc(id) + "/peers/" + esc(alias), json: body}, &out)
}

// DeletePeerLink is DELETE /v1/vms/{id}/peers/{alias}.
func (cl *Client) DeletePeerLink(ctx context.Context, id, alias string) error {
	return cl.do(ctx, call{method: "DELETE", path: "/v1/vms/" + esc(id) + "/peers/" + esc(alias)}, nil)
}

// SyncPeers is POST /v1/vms/{id}/peers/sync.
func (cl *Client) SyncPeers(ctx context.Context, id string) (map[string]any, error) {
	var out map[string]any
	return out, cl.do(ctx, call{method: "POST", path: "/v1/vms/" + esc(id) + "/peers/sync"}, &out)
}

// PeerCalls is GET /v1/peer-calls (vmID "" for all; limit 0 for the default).
func (cl *Client) PeerCalls(ctx context.Context, vmID string, limit int) ([]map[string]any, error) {
	q := url.Values{}
	if vmID != "" {
		q.Set("vmId", vmID)
	}
	if limit > 0 {
		q.Set("limit", fmt.Sprint(limit))
	}
	var out []map[string]any
	return out, cl.do(ctx, call{method: "GET", path: "/v1/peer-calls", query: q, retry: true}, &out)
}

// SetSecrets is PATCH /v1/vms/{id}/secrets: replaces a provider's secrets ("KEY=value").
func (cl *Client) SetSecrets(ctx context.Context, id string, secretEnv []string) error {
	return cl.do(ctx, call{method: "PATCH", path: "/v1/vms/" + esc(id) + "/secrets", json: map[string]any{"secretEnv": secretEnv}}, nil)
}

// CreateAPIKey is POST /v1/api-keys: a new key; the answer's "key" holds it, shown this once
// (expiresInDays 0: until revoked).
func (cl *Client) CreateAPIKey(ctx context.Context, name string, expiresInDays int) (map[string]any, error) {
	body := map[string]any{"name": name}
	if expiresInDays > 0 {
		body["expiresInDays"] = expiresInDays
	}
	var out map[string]any
	return out, cl.do(ctx, call{method: "POST", path: "/v1/api-keys", json: body}, &out)
}

// ListAPIKeys is GET /v1/api-keys (never the keys themselves).
func (cl *Client) ListAPIKeys(ctx context.Context) ([]map[string]any, error) {
	var out []map[string]any
	return out, cl.do(ctx, call{method: "GET", path: "/v1/api-keys", retry: true}, &out)
}

// RevokeAPIKey is DELETE /v1/api-keys/{id}: refused from the next request on.
func (cl *Client) RevokeAPIKey(ctx context.Context, keyID string) error {
	return cl.do(ctx, call{method: "DELETE", path: "/v1/api-keys/" + esc(keyID)}, nil)
}

// Pool is GET /v1/pool.
func (cl *Client) Pool(ctx context.Context) (map[string]any, error) {
	var out map[string]any
	return out, cl.do(ctx, call{method: "GET", path: "/v1/pool", retry: true}, &out)
}

// CreatePtyToken is POST /v1/vms/{id}/pty-tokens.
func (cl *Client) CreatePtyToken(ctx context.Context, id string) (*PtyToken, error) {
	var t PtyToken
	return &t, cl.do(ctx, call{method: "POST", path: "/v1/vms/" + esc(id) + "/pty-tokens"}, &t)
}

// ListPtySessions is GET /v1/vms/{id}/pty-sessions.
func (cl *Client) ListPtySessions(ctx context.Context, id string) ([]map[string]any, error) {
	var out []map[string]any
	return out, cl.do(ctx, call{method: "GET", path: "/v1/vms/" + esc(id) + "/pty-sessions", retry: true}, &out)
}

// KillPtySession is DELETE /v1/vms/{id}/pty-sessions/{sessionId}.
func (cl *Client) KillPtySession(ctx context.Context, id, sessionID string) error {
	return cl.do(ctx, call{method: "DELETE", path: "/v1/vms/" + esc(id) + "/pty-sessions/" + esc(sessionID)}, nil)
}

// TerminalURL is the WebSocket URL of a new terminal (GET /v1/vms/{id}/pty) carrying a fresh
// single-use token, for any WebSocket client (the standard library has none); query may set
// cols, rows, cmd or session.
func (cl *Client) TerminalURL(ctx context.Context, id string, query url.Values) (string, error) {
	t, err := cl.CreatePtyToken(ctx, id)
	if err != nil {
		return "", err
	}
	q := url.Values{}
	for k, v := range query {
		q[k] = v
	}
	q.Set("token", t.Token)
	return strings.Replace(cl.URL, "http", "ws", 1) + "/v1/vms/" + esc(id) + "/pty?" + q.Encode(), nil
}

// ExecSocketURL is the WebSocket URL of an exec with streamed stdin (GET /v1/vms/{id}/exec/ws)
// carrying a fresh single-use token.
func (cl *Client) ExecSocketURL(ctx context.Context, id string) (string, error) {
	t, err := cl.CreatePtyToken(ctx, id)
	if err != nil {
		return "", err
	}
	return strings.Replace(cl.URL, "http", "ws", 1) + "/v1/vms/" + esc(id) + "/exec/ws?token=" + url.QueryEscape(t.Token), nil
}
