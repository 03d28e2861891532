package workers

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	agentpb "github.com/dhvisor/dhvisor/proto/agentpb"
)

// maxBody bounds a request: 20,000 workers of ~200 bytes of JSON each.
const maxBody = 8 << 20

// Handler serves the HTTP/JSON form of RegisterWorkers:
//
//	PUT    /v1/workers/{dispatcher}   body: {"leaseTtlMs": 30000, "workers": [{"name": ..., "host": ..., "port": ..., "nonce": ..., "kind": ..., "envoyPrefix": ...}]}
//	DELETE /v1/workers/{dispatcher}   the dispatcher has no workers any more
//	GET    /v1/workers                what this agent last registered, by dispatcher
//
// Field names are the proto's, in lowerCamel or snake_case (protojson).
func (r *Registry) Handler() http.Handler {
	mux := http.NewServeMux()
	put := func(w http.ResponseWriter, req *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, req.Body, maxBody))
		if err != nil {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Errorf("body: %v (at most %d bytes)", err, maxBody))
			return
		}
		var reg agentpb.RegisterWorkersRequest
		if err := protojson.Unmarshal(body, &reg); err != nil {
			writeError(w, http.StatusBadRequest, fmt.Errorf("body: %v", err))
			return
		}
		r.serve(w, req.Context(), req.PathValue("dispatcher"), &reg)
	}
	mux.HandleFunc("PUT /v1/workers/{dispatcher}", put)
	mux.HandleFunc("POST /v1/workers/{dispatcher}", put)
	mux.HandleFunc("DELETE /v1/workers/{dispatcher}", func(w http.ResponseWriter, req *http.Request) {
		r.serve(w, req.Context(), req.PathValue("dispatcher"), &agentpb.RegisterWorkersRequest{})
	})
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

// Serve serves the HTTP endpoint on l until ctx ends.
func (r *Registry) Serve(ctx context.Context, l net.Listener, log *slog.Logger) error {
	srv := &http.Server{Handler: r.Handler(), ReadHeaderTimeout: 5 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
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
