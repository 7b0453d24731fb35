package serve

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// Listeners are where a server listens: REST (HTTP) and, optionally, the
// Open Inference Protocol over gRPC.
type Listeners struct {
	HTTP net.Listener // nil: no REST
	GRPC net.Listener // nil: no gRPC
}

// Run serves REST on ln (over TLS when cfg is set) until ctx is cancelled;
// see Serve.
func (s *Server) Run(ctx context.Context, ln net.Listener, cfg *tls.Config) error {
	return s.Serve(ctx, Listeners{HTTP: ln}, cfg)
}

// NewGRPC returns the gRPC server of the Open Inference Protocol on s's
// models (with the gRPC health service), over TLS when cfg is set: messages
// up to Options.MaxBody, the token in the authorization metadata.
func (s *Server) NewGRPC(cfg *tls.Config) (*grpc.Server, *health.Server) {
	g := &grpcService{s: s}
	opts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(int(min(s.opt.MaxBody, 1<<31-1))),
		grpc.ForceServerCodecV2(newGRPCCodec()),
		grpc.UnaryInterceptor(g.unary),
		grpc.ConnectionTimeout(10 * time.Second),
	}
	if cfg != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(cfg.Clone())))
	}
	gs := grpc.NewServer(opts...)
	gs.RegisterService(g.desc(), g)
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus("inference.GRPCInferenceService", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(gs, hs)
	return gs, hs
}

// Serve serves on the listeners (over TLS when cfg is set) until ctx is
// cancelled, then stops accepting connections, answers the requests in
// flight on both (for at most the request timeout plus 5 s; gRPC health
// turns NOT_SERVING at once), stops the batchers and releases the models.
func (s *Server) Serve(ctx context.Context, ls Listeners, cfg *tls.Config) error {
	if ls.HTTP == nil && ls.GRPC == nil {
		return errors.New("no listener")
	}
	errc := make(chan error, 2)
	running := 0
	var hs *http.Server
	if ls.HTTP != nil {
		hs = &http.Server{
			Handler:           s,
			ReadHeaderTimeout: 10 * time.Second,
			ReadTimeout:       s.opt.Timeout,
			WriteTimeout:      s.opt.Timeout + 30*time.Second,
			IdleTimeout:       2 * time.Minute,
			MaxHeaderBytes:    64 << 10,
			ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
			TLSConfig:         cfg.Clone(), // http.Server adds its protocols to it: not shared with gRPC
		}
		running++
		go func() {
			if cfg != nil {
				errc <- hs.ServeTLS(ls.HTTP, "", "")
			} else {
				errc <- hs.Serve(ls.HTTP)
			}
		}()
	}
	var gs *grpc.Server
	var health *health.Server
	if ls.GRPC != nil {
		gs, health = s.NewGRPC(cfg)
		running++
		go func() { errc <- gs.Serve(ls.GRPC) }()
	}
	var failed error
	select {
	case failed = <-errc:
		running--
		s.log.Error("listener failed", "err", failed)
	case <-ctx.Done():
	}
	drain := s.opt.Timeout + 5*time.Second
	s.log.Info("draining", "timeout", drain.String())
	s.Drain()
	sctx, cancel := context.WithTimeout(context.Background(), drain)
	defer cancel()
	var errs []error
	if failed != nil {
		errs = append(errs, failed)
	}
	grpcDone := make(chan struct{})
	if gs != nil {
		health.Shutdown()
		go func() {
			gs.GracefulStop()
			close(grpcDone)
		}()
	} else {
		close(grpcDone)
	}
	if hs != nil {
		if err := hs.Shutdown(sctx); err != nil {
			errs = append(errs, fmt.Errorf("draining: %w", err))
		}
	}
	select {
	case <-grpcDone:
	case <-sctx.Done():
		gs.Stop()
		<-grpcDone
		errs = append(errs, fmt.Errorf("draining gRPC: %w", sctx.Err()))
	}
	for ; running > 0; running-- {
		if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, grpc.ErrServerStopped) && failed == nil {
			errs = append(errs, err)
		}
	}
	s.Close()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	s.log.Info("stopped")
	return nil
}
