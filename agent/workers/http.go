package workers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/dhvisor/dhvisor/internal/peercred"
	agentpb "github.com/dhvisor/dhvisor/proto/agentpb"
)

// maxBody bounds a request: 20,000 workers of ~200 bytes of JSON each.
const maxBody = 8 << 20

// Limits of the endpoint: a client that sends slowly, never reads, or
// opens many calls at once holds an agent goroutine and buffer each.
const (
	readHeaderTimeout = 5 * time.Second
	// readTimeout is for the whole request, 8 MB at ~1 MB/s.
	readTimeout = 10 * time.Second
	// writeTimeout covers the call to the coordinators: up to callTimeout
	// at each of up to five replicas, and the answer.
	writeTimeout = 5*callTimeout + 5*time.Second
	idleTimeout  = time.Minute
	// maxInFlight registrations are served at once; the others are told
	// to come back (each may hold up to maxBody).
	maxInFlight = 16
)

// caller is who the kernel says opened a request's connection.
type caller struct {
	cred peercred.Cred
	err  error // not identified
	tcp  bool  // the insecure TCP endpoint: nobody is identified there
}

type callerKey struct{}

// connContext records the caller of each connection, once, when it is
// accepted: SO_PEERCRED names the process that connected.
func connContext(ctx context.Context, c net.Conn) context.Context {
	if _, ok := c.LocalAddr().(*net.UnixAddr); !ok {
		return context.WithValue(ctx, callerKey{}, caller{tcp: true})
	}
	cred, err := peercred.Of(c)
	return context.WithValue(ctx, callerKey{}, caller{cred: cred, err: err})
}

// Handler serves the HTTP/JSON form of RegisterWorkers:
//
//	PUT    /v1/workers/{dispatcher}   body: {"leaseTtlMs": 30000, "workers": [{"name": ..., "host": ..., "port": ..., "nonce": ..., "kind": ..., "envoyPrefix": ...}]}
//	DELETE /v1/workers/{dispatcher}   the dispatcher has no workers any more
//	GET    /v1/workers                what this agent last registered, by dispatcher
//
// Field names are the proto's, in lowerCamel or snake_case (protojson).
// A PUT or DELETE must come from a process of the dispatcher (or root),
// as the kernel names the caller of the connection.
func (r *Registry) Handler() http.Handler {
	mux := http.NewServeMux()
	slots := make(chan struct{}, maxInFlight)
	put := func(w http.ResponseWriter, req *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, req.Body, maxBody))
		if err != nil {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Errorf("body: %v (at most %d bytes)", err, maxBody))
			return
		}
		reg, err := ParseBody(body)
		if err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		r.serve(w, req.Context(), req.PathValue("dispatcher"), reg)
	}
	del := func(w http.ResponseWriter, req *http.Request) {
		r.serve(w, req.Context(), req.PathValue("dispatcher"), &agentpb.RegisterWorkersRequest{})
	}
	// guard authorizes a write before its body is read, and bounds how
	// many are served at once.
	guard := func(h http.HandlerFunc) http.HandlerFunc {
		return func(w http.ResponseWriter, req *http.Request) {
			if err := r.authorize(req.Context(), req.PathValue("dispatcher")); err != nil {
				writeError(w, http.StatusForbidden, errors.New(status.Convert(err).Message()))
				return
			}
			select {
			case slots <- struct{}{}:
				defer func() { <-slots }()
			default:
				w.Header().Set("Retry-After", "1")
				writeError(w, http.StatusServiceUnavailable, fmt.Errorf("busy: %d registrations in flight; send the set again", maxInFlight))
				return
			}
			h(w, req)
		}
	}
	mux.HandleFunc("PUT /v1/workers/{dispatcher}", guard(put))
	mux.HandleFunc("POST /v1/workers/{dispatcher}", guard(put))
	mux.HandleFunc("DELETE /v1/workers/{dispatcher}", guard(del))
	mux.HandleFunc("GET /v1/workers", func(w http.ResponseWriter, _ *http.Request) {
		out := map[string]json.RawMessage{}
		for d, resp := range r.Last() {
			b, _ := protojson.Marshal(resp)
			out[d] = b
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(out)
	})
	return mux
}

// ParseBody decodes a PUT's body; the registry checks the rest.
func ParseBody(body []byte) (*agentpb.RegisterWorkersRequest, error) {
	var reg agentpb.RegisterWorkersRequest
	if err := protojson.Unmarshal(body, &reg); err != nil {
		return nil, fmt.Errorf("body: %v", err)
	}
	return &reg, nil
}

// authorize checks the caller of a request's connection.
func (r *Registry) authorize(ctx context.Context, dispatcher string) error {
	c, ok := ctx.Value(callerKey{}).(caller)
	switch {
	case !ok:
		return status.Error(codes.PermissionDenied, "caller not identified: serve the endpoint with Serve")
	case c.tcp:
		return nil // workers.insecure_tcp: the site chose to trust every local process
	case c.err != nil:
		return status.Errorf(codes.PermissionDenied, "caller not identified: %v", c.err)
	}
	return r.Authorize(c.cred, dispatcher)
}

func (r *Registry) serve(w http.ResponseWriter, ctx context.Context, dispatcher string, reg *agentpb.RegisterWorkersRequest) {
	if reg.Dispatcher != "" && reg.Dispatcher != dispatcher {
		writeError(w, http.StatusBadRequest, fmt.Errorf("dispatcher: %q in the body, %q in the path", reg.Dispatcher, dispatcher))
		return
	}
	if reg.Node != "" {
		writeError(w, http.StatusBadRequest, fmt.Errorf("node: not settable here; the agent registers for its own node"))
		return
	}
	reg.Dispatcher = dispatcher
	resp, err := r.Register(ctx, reg)
	if err != nil {
		code := http.StatusServiceUnavailable
		switch status.Code(err) {
		case codes.InvalidArgument:
			code = http.StatusBadRequest
		case codes.FailedPrecondition:
			code = http.StatusConflict
		case codes.PermissionDenied:
			code = http.StatusForbidden
		}
		writeError(w, code, fmt.Errorf("%s", status.Convert(err).Message()))
		return
	}
	b, _ := protojson.Marshal(resp)
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(b)
}

func writeError(w http.ResponseWriter, code int, err error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
}

// ListenUnix opens the workers socket at path: mode 0666, since any
// dispatcher's user must reach it; each call is authorized on its own.
func ListenUnix(path string) (net.Listener, error) { return peercred.Listen(path, 0o666) }

// Serve serves the HTTP endpoint on l until ctx ends.
func (r *Registry) Serve(ctx context.Context, l net.Listener, log *slog.Logger) error {
	srv := &http.Server{
		Handler:           r.Handler(),
		ConnContext:       connContext,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	err := srv.Serve(l)
	<-done
	if err == http.ErrServerClosed {
		return nil
	}
	return err
}
