package rds_test

import (
	"bytes"
	"io"
	"net/http"
)

// readBody reads a request's body and puts it back for the real transport.
func readBody(req *http.Request) ([]byte, error) {
	body, err := io.ReadAll(req.Body)
	req.Body.Close()
	req.Body = io.NopCloser(bytes.NewReader(body))
	return body, err
}
