package rds

import "context"

// Sandbox is one VM and its client: create it, defer Kill.
type Sandbox struct {
	Client *Client
	VM     *VM
}

// CreateSandbox creates a RUNNING VM.
func CreateSandbox(ctx context.Context, c *Client, req CreateVM) (*Sandbox, error) {
	vm, err := c.CreateVM(ctx, req)
	if err != nil {
		return nil, err
	}
	return &Sandbox{Client: c, VM: vm}, nil
}

// ID is the VM's id.
func (s *Sandbox) ID() string { return s.VM.ID }

// Exec runs a shell command.
func (s *Sandbox) Exec(ctx context.Context, cmd string) (*ExecResult, error) {
	return s.Client.Exec(ctx, s.ID(), Exec{Cmd: cmd})
}

// ExecStream runs a command, calling onEvent with its output as it comes.
func (s *Sandbox) ExecStream(ctx context.Context, cmd string, onEvent func(ExecEvent) error) (*ExecEvent, error) {
	return s.Client.ExecStream(ctx, s.ID(), Exec{Cmd: cmd}, onEvent)
}

// RunPython runs Python code; assign result to return a value.
func (s *Sandbox) RunPython(ctx context.Context, code string) (*RunResult, error) {
	return s.Client.RunPython(ctx, s.ID(), Run{Code: code})
}

// RunTS runs TypeScript; result.set(value) is the result.
func (s *Sandbox) RunTS(ctx context.Context, code string) (*RunResult, error) {
	return s.Client.RunTS(ctx, s.ID(), Run{Code: code})
}

// RunJS runs JavaScript under Node.js.
func (s *Sandbox) RunJS(ctx context.Context, code string) (*RunResult, error) {
	return s.Client.RunJS(ctx, s.ID(), Run{Code: code})
}

// WriteFile writes one file in the workspace.
func (s *Sandbox) WriteFile(ctx context.Context, path string, data []byte) error {
	return s.Client.WriteFile(ctx, s.ID(), path, data)
}

// ReadFile reads one file.
func (s *Sandbox) ReadFile(ctx context.Context, path string) ([]byte, error) {
	return s.Client.ReadFile(ctx, s.ID(), path)
}

// UploadDir uploads a local directory's contents into dest.
func (s *Sandbox) UploadDir(ctx context.Context, localDir, dest string) error {
	return s.Client.UploadDir(ctx, s.ID(), localDir, dest)
}

// DownloadDir downloads path into a local directory.
func (s *Sandbox) DownloadDir(ctx context.Context, path, localDir string) ([]string, error) {
	return s.Client.DownloadDir(ctx, s.ID(), path, localDir)
}

// Snapshot snapshots the VM.
func (s *Sandbox) Snapshot(ctx context.Context) (*Snapshot, error) {
	return s.Client.CreateSnapshot(ctx, s.ID(), nil)
}

// Stop shuts the VM down, keeping its workspace.
func (s *Sandbox) Stop(ctx context.Context) error { return s.Client.StopVM(ctx, s.ID()) }

// Start boots the stopped VM again.
func (s *Sandbox) Start(ctx context.Context) error { return s.Client.StartVM(ctx, s.ID()) }

// Kill deletes the VM.
func (s *Sandbox) Kill(ctx context.Context) error { return s.Client.DeleteVM(ctx, s.ID()) }

// Context starts a code context ("python", "typescript" or "javascript"); defer its Delete.
func (s *Sandbox) Context(ctx context.Context, language string) (*CodeContext, error) {
	info, err := s.Client.CreateContext(ctx, s.ID(), CreateContext{Language: language})
	if err != nil {
		return nil, err
	}
	return &CodeContext{Sandbox: s, Info: info}, nil
}

// CodeContext is a code context of a sandbox: names defined by one Run are there for the next.
type CodeContext struct {
	Sandbox *Sandbox
	Info    *Context
}

// Run runs code in the context; its last expression (or result) is the result.
func (c *CodeContext) Run(ctx context.Context, code string) (*RunResult, error) {
	req := Run{Code: code, ContextID: c.Info.ContextID}
	switch c.Info.Language {
	case "python":
		return c.Sandbox.Client.RunPython(ctx, c.Sandbox.ID(), req)
	case "javascript":
		return c.Sandbox.Client.RunJS(ctx, c.Sandbox.ID(), req)
	default:
		return c.Sandbox.Client.RunTS(ctx, c.Sandbox.ID(), req)
	}
}

// Restart drops the context's state.
func (c *CodeContext) Restart(ctx context.Context) error {
	info, err := c.Sandbox.Client.RestartContext(ctx, c.Sandbox.ID(), c.Info.ContextID)
	if err == nil {
		c.Info = info
	}
	return err
}

// Delete ends the context.
func (c *CodeContext) Delete(ctx context.Context) error {
	return c.Sandbox.Client.DeleteContext(ctx, c.Sandbox.ID(), c.Info.ContextID)
}
