package serve

import (
	"errors"
	"fmt"
	"net/http"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// apiError is a refusal with its HTTP status; gRPC answers the code mapped
// from it (grpcCode).
type apiError struct {
	code     int        // HTTP status
	msg      string     // for the client
	retry    bool       // the refusal is temporary: REST adds Retry-After
	deadline bool       // a 503 because the request's time ran out (gRPC: DeadlineExceeded)
	reason   string     // for metrics: why a memory refusal happened ("request", "server", "map")
	grpc     codes.Code // when not the mapping of code
}

func (e *apiError) Error() string { return e.msg }

// errorf makes an apiError.
func errorf(code int, format string, a ...any) *apiError {
	return &apiError{code: code, msg: fmt.Sprintf(format, a...)}
}

// asAPI returns err as an apiError: internal errors become 500s.
func asAPI(err error) *apiError {
	var e *apiError
	if errors.As(err, &e) {
		return e
	}
	return errorf(http.StatusInternalServerError, "%v", err)
}

// grpcCode maps an HTTP status to the gRPC code of the same meaning (the
// mapping of gRPC's own HTTP guidelines).
func grpcCode(e *apiError) codes.Code {
	if e.grpc != codes.OK {
		return e.grpc
	}
	switch e.code {
	case http.StatusBadRequest:
		return codes.InvalidArgument
	case http.StatusUnauthorized:
		return codes.Unauthenticated
	case http.StatusForbidden:
		return codes.PermissionDenied
	case http.StatusNotFound:
		return codes.NotFound
	case http.StatusMethodNotAllowed:
		return codes.Unimplemented
	case http.StatusRequestEntityTooLarge, http.StatusTooManyRequests:
		return codes.ResourceExhausted
	case http.StatusServiceUnavailable:
		if e.deadline {
			return codes.DeadlineExceeded
		}
		return codes.Unavailable
	case http.StatusGatewayTimeout:
		return codes.DeadlineExceeded
	}
	return codes.Internal
}

// grpcError is err as a gRPC status.
func grpcError(err error) error {
	e := asAPI(err)
	return status.Error(grpcCode(e), e.msg)
}
