package rds

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// PackDir returns the contents of the local directory dir (not dir itself) as a tar.gz: files
// and directories only.
func PackDir(dir string) ([]byte, error) {
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if !info.Mode().IsRegular() && !info.IsDir() {
			return nil // links and devices stay home
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		hdr, err := tar.FileInfoHeader(info, "")
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		hdr.Uname, hdr.Gname, hdr.Uid, hdr.Gid = "", "", 0, 0
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if info.IsDir() {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(tw, f)
		return err
	})
	if err != nil {
		return nil, err
	}
	return finish(&buf, gz, tw)
}

// finish closes the tar and gzip writers and returns the archive they wrote into buf.
func finish(buf *bytes.Buffer, gz *gzip.Writer, tw *tar.Writer) ([]byte, error) {
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := gz.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// PackFile returns a tar.gz holding one file name with data.
func PackFile(name string, data []byte, mode int64) ([]byte, error) {
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: mode, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(data); err != nil {
		return nil, err
	}
	return finish(&buf, gz, tw)
}

// eachFile calls fn for every regular file and directory of a tar.gz whose name stays inside
// (no "..", not absolute).
func eachFile(archive []byte, fn func(name string, hdr *tar.Header, r io.Reader) error) error {
	gz, err := gzip.NewReader(bytes.NewReader(archive))
	if err != nil {
		return err
	}
	tr := tar.NewReader(gz)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		name := path.Clean(strings.TrimLeft(hdr.Name, "/"))
		if name == "." || name == ".." || strings.HasPrefix(name, "../") {
			continue
		}
		if hdr.Typeflag != tar.TypeReg && hdr.Typeflag != tar.TypeDir {
			continue
		}
		if err := fn(name, hdr, tr); err != nil {
			return err
		}
	}
}

// UnpackInto unpacks a download into the local directory dir (created if missing): files and
// directories only, nothing outside it. It returns the files written, relative to dir.
func UnpackInto(archive []byte, dir string) ([]string, error) {
	var written []string
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	err := eachFile(archive, func(name string, hdr *tar.Header, r io.Reader) error {
		target := filepath.Join(dir, filepath.FromSlash(name))
		if hdr.Typeflag == tar.TypeDir {
			return os.MkdirAll(target, 0o755)
		}
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			return err
		}
		f, err := os.OpenFile(target, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, fs.FileMode(hdr.Mode&0o777))
		if err != nil {
			return err
		}
		defer f.Close()
		if _, err := io.Copy(f, r); err != nil {
			return err
		}
		written = append(written, name)
		return nil
	})
	return written, err
}

// UploadDir uploads the contents of the local directory localDir into dest.
func (cl *Client) UploadDir(ctx context.Context, id, localDir, dest string) error {
	archive, err := PackDir(localDir)
	if err != nil {
		return err
	}
	return cl.Upload(ctx, id, archive, dest)
}

// DownloadDir downloads path and unpacks it into the local directory localDir.
func (cl *Client) DownloadDir(ctx context.Context, id, remotePath, localDir string) ([]string, error) {
	archive, err := cl.Download(ctx, id, remotePath)
	if err != nil {
		return nil, err
	}
	return UnpackInto(archive, localDir)
}

// WriteFile writes one file at remotePath in the workspace.
func (cl *Client) WriteFile(ctx context.Context, id, remotePath string, data []byte) error {
	dir, name := path.Split(remotePath)
	archive, err := PackFile(name, data, 0o644)
	if err != nil {
		return err
	}
	if dir == "" {
		dir = "/workspace"
	}
	return cl.Upload(ctx, id, archive, strings.TrimRight(dir, "/"))
}

// ReadFile returns the bytes of the file at remotePath.
func (cl *Client) ReadFile(ctx context.Context, id, remotePath string) ([]byte, error) {
	archive, err := cl.Download(ctx, id, remotePath)
	if err != nil {
		return nil, err
	}
	var found [][]byte
	err = eachFile(archive, func(_ string, hdr *tar.Header, r io.Reader) error {
		if hdr.Typeflag == tar.TypeReg {
			data, err := io.ReadAll(r)
			found = append(found, data)
			return err
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(found) != 1 {
		return nil, fmt.Errorf("expected one file at %s, found %d", remotePath, len(found))
	}
	return found[0], nil
}
