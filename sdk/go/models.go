package rds

import "encoding/json"

// VM is a VM as the manager reports it.
type VM struct {
	ID               string          `json:"id"`
	State            string          `json:"state"`
	CPU              int             `json:"cpu"`
	MemMB            int             `json:"memMb"`
	DiskSizeMB       int             `json:"diskSizeMb"`
	Runtime          string          `json:"runtime"`
	Isolation        string          `json:"isolation"`
	OutboundInternet bool            `json:"outboundInternet"`
	ImageID          *string         `json:"imageId,omitempty"`
	SnapshotID       *string         `json:"snapshotId,omitempty"`
	ProvisionMode    string          `json:"provisionMode,omitempty"`
	StateReason      *string         `json:"stateReason,omitempty"`
	GuestIP          *string         `json:"guestIp,omitempty"`
	SecretEnvKeys    []string        `json:"secretEnvKeys,omitempty"`
	PeerLinks        []PeerLink      `json:"peerLinks,omitempty"`
	Network          json.RawMessage `json:"network,omitempty"`
	CreatedAt        int64           `json:"createdAt"`
	UpdatedAt        int64           `json:"updatedAt"`
}

// PeerLink names a provider VM a consumer may call.
type PeerLink struct {
	Alias      string `json:"alias"`
	VMID       string `json:"vmId"`
	SourceMode string `json:"sourceMode,omitempty"`
}

// CreateVM is the body of POST /v1/vms. CPU and MemMB default to 1 and 256 when zero.
type CreateVM struct {
	CPU              int        `json:"cpu"`
	MemMB            int        `json:"memMb"`
	DiskSizeMB       int        `json:"diskSizeMb,omitempty"`
	ImageID          string     `json:"imageId,omitempty"`
	OutboundInternet *bool      `json:"outboundInternet,omitempty"`
	AllowIPs         []string   `json:"allowIps,omitempty"`
	AllowDomains     []string   `json:"allowDomains,omitempty"`
	SecretEnv        []string   `json:"secretEnv,omitempty"`
	PeerLinks        []PeerLink `json:"peerLinks,omitempty"`
	// SnapshotID starts the VM from a snapshot.
	SnapshotID string `json:"userOverlaySnapshotId,omitempty"`
}

// Exec is the body of POST /v1/vms/{id}/exec.
type Exec struct {
	Cmd       string            `json:"cmd"`
	Cwd       string            `json:"cwd,omitempty"`
	Env       map[string]string `json:"env,omitempty"`
	Stdin     *string           `json:"stdin,omitempty"`
	TimeoutMs int64             `json:"timeoutMs,omitempty"`
	// ExecID makes a retry join the first attempt; generated when empty.
	ExecID string `json:"execId,omitempty"`
}

// ExecResult is how a command ended and what it printed.
type ExecResult struct {
	ExitCode        *int   `json:"exitCode"`
	Stdout          string `json:"stdout"`
	Stderr          string `json:"stderr"`
	StdoutTruncated bool   `json:"stdoutTruncated"`
	StderrTruncated bool   `json:"stderrTruncated"`
	TimedOut        bool   `json:"timedOut"`
	Signal          *int   `json:"signal,omitempty"`
	DurationMs      int64  `json:"durationMs"`
	OOMKilled       bool   `json:"oomKilled,omitempty"`
}

// Code is the exit status, -1 when the command did not exit on its own (signal, timeout).
func (r *ExecResult) Code() int {
	if r.ExitCode == nil {
		return -1
	}
	return *r.ExitCode
}

// ExecEvent is one event of a streamed exec: Type is "stdout", "stderr" or, last, "exit".
type ExecEvent struct {
	Type       string `json:"type"`
	Data       string `json:"data,omitempty"`
	ExitCode   *int   `json:"exitCode,omitempty"`
	TimedOut   bool   `json:"timedOut,omitempty"`
	Signal     *int   `json:"signal,omitempty"`
	DurationMs int64  `json:"durationMs,omitempty"`
}

// Run is the body of run-ts, run-js and run-python.
type Run struct {
	Code      string            `json:"code,omitempty"`
	Path      string            `json:"path,omitempty"`
	Args      []string          `json:"args,omitempty"`
	Env       map[string]string `json:"env,omitempty"`
	TimeoutMs int64             `json:"timeoutMs,omitempty"`
	ContextID string            `json:"contextId,omitempty"`
	AllowNet  *bool             `json:"allowNet,omitempty"`
	ExecID    string            `json:"execId,omitempty"`
}

// RunResult is an ExecResult plus the code's result (JSON) or its error.
type RunResult struct {
	ExecResult
	Result           json.RawMessage `json:"result,omitempty"`
	Error            json.RawMessage `json:"error,omitempty"`
	ContextRestarted bool            `json:"contextRestarted,omitempty"`
}

// Decode unmarshals the run's result into v.
func (r *RunResult) Decode(v any) error { return json.Unmarshal(r.Result, v) }

// Snapshot is a saved VM disk (and memory).
type Snapshot struct {
	ID         string  `json:"id"`
	Kind       string  `json:"kind"`
	Content    string  `json:"content"`
	State      string  `json:"state"`
	Runtime    string  `json:"runtime"`
	Internal   bool    `json:"internal"`
	CPU        int     `json:"cpu"`
	MemMB      int     `json:"memMb"`
	DiskSizeMB int     `json:"diskSizeMb"`
	SizeBytes  int64   `json:"sizeBytes"`
	HasMemory  bool    `json:"hasMemory"`
	ImageID    *string `json:"imageId,omitempty"`
	SourceVMID *string `json:"sourceVmId,omitempty"`
	CreatedAt  int64   `json:"createdAt"`
}

// Image is a guest image (kernel, root filesystem, initrd).
type Image struct {
	ID          string `json:"id"`
	Name        string `json:"name"`
	Description string `json:"description"`
	IsDefault   bool   `json:"isDefault"`
	HasKernel   bool   `json:"hasKernel"`
	HasRootfs   bool   `json:"hasRootfs"`
	HasInitrd   bool   `json:"hasInitrd"`
	CreatedAt   int64  `json:"createdAt"`
}

// Context is a code context: an interpreter whose state lasts between runs.
type Context struct {
	ContextID     string `json:"contextId"`
	Language      string `json:"language"`
	Cwd           string `json:"cwd"`
	Runs          int    `json:"runs"`
	Restarts      int    `json:"restarts"`
	Busy          bool   `json:"busy"`
	IdleTimeoutMs int64  `json:"idleTimeoutMs"`
	CreatedAt     int64  `json:"createdAt"`
	LastUsedAt    int64  `json:"lastUsedAt"`
}

// CreateContext is the body of POST /v1/vms/{id}/contexts; Language is "python", "typescript"
// or "javascript".
type CreateContext struct {
	Language      string            `json:"language"`
	Cwd           string            `json:"cwd,omitempty"`
	Env           map[string]string `json:"env,omitempty"`
	IdleTimeoutMs int64             `json:"idleTimeoutMs,omitempty"`
	AllowNet      *bool             `json:"allowNet,omitempty"`
}

// PtyToken authenticates one WebSocket (terminal or exec) within a minute, once.
type PtyToken struct {
	Token     string `json:"token"`
	ExpiresAt int64  `json:"expiresAt"`
}

// Health is the manager's health and runtime.
type Health struct {
	Status         string `json:"status"`
	Version        string `json:"version"`
	Runtime        string `json:"runtime"`
	RuntimeReason  string `json:"runtimeReason"`
	Isolation      string `json:"isolation"`
	InstallationID string `json:"installationId"`
}

// NetworkPolicy is the body of PATCH /v1/vms/{id}/network; nil fields stay as they are.
type NetworkPolicy struct {
	OutboundInternet *bool    `json:"outboundInternet,omitempty"`
	AllowIPs         []string `json:"allowIps,omitempty"`
	AllowDomains     []string `json:"allowDomains,omitempty"`
}
