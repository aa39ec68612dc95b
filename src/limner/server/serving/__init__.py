"""A request's life after its inputs are parsed, in the order it is lived:

- `work`: the Work a route hands on (the resolved request, the model, the engine job), checked by its
  engine before anything is queued;
- `run`: THE run path, one Run per request whatever carries it: jobs to the scheduler, partial and
  completed events from one builder (`events`), the encoded images;
- `respond`: a plain request's answer, the ImagesResponse body or the stream of events;
- `durable`: what must survive (Idempotency-Key, asynchronous jobs, replay after a restart, callbacks),
  a Run written to the job store.
"""
