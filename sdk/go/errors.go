package rds

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// Error is a request the manager refused or failed: the HTTP status (0 when the manager could not
// be reached), its error code and message. Test for kinds with errors.Is against the sentinels
// (ErrNotFound, ...) or errors.As into *Error.
type Error struct {
	Status  int
	Code    string
	Message string
	// RetryAfter is set on a 429 when the manager said how long to wait.
	RetryAfter time.Duration
}

func (e *Error) Error() string { return fmt.Sprintf("%d %s: %s", e.Status, e.Code, e.Message) }

// Sentinels matched by errors.Is on an *Error of that status.
var (
	ErrBadRequest      = errors.New("bad request (400)")
	ErrUnauthorized    = errors.New("unauthorized (401)")
	ErrNotFound        = errors.New("not found (404)")
	ErrConflict        = errors.New("conflict (409)")
	ErrPayloadTooLarge = errors.New("payload too large (413)")
	ErrRateLimited     = errors.New("rate limited (429)")
	ErrServer          = errors.New("server error (5xx)")
	ErrUnreachable     = errors.New("manager unreachable")
)

// Is matches the sentinel of the error's status.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrBadRequest:
		return e.Status == http.StatusBadRequest
	case ErrUnauthorized:
		return e.Status == http.StatusUnauthorized
	case ErrNotFound:
		return e.Status == http.StatusNotFound
	case ErrConflict:
		return e.Status == http.StatusConflict
	case ErrPayloadTooLarge:
		return e.Status == http.StatusRequestEntityTooLarge
	case ErrRateLimited:
		return e.Status == http.StatusTooManyRequests
	case ErrServer:
		return e.Status >= 500
	case ErrUnreachable:
		return e.Status == 0
	}
	return false
}

func errorOf(resp *http.Response, body []byte) error {
	e := &Error{Status: resp.StatusCode, Code: "error", Message: string(body)}
	var parsed struct {
		Message string `json:"message"`
		Error   struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &parsed) == nil {
		if parsed.Error.Code != "" {
			e.Code = parsed.Error.Code
		}
		if parsed.Error.Message != "" {
			e.Message = parsed.Error.Message
		} else if parsed.Message != "" {
			e.Message = parsed.Message
		}
	}
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil {
		e.RetryAfter = time.Duration(s) * time.Second
	}
	return e
}
