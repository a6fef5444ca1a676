{{/*
Names. `fullname` is at most 40 characters so that every derived name stays within
Kubernetes' limits: Services `<fullname>-allocator` (63), and ArenaFleets `<fullname>-<region>`
whose gameserver pods, `<fleet>-<5 characters>`, are also gameserver ids (at most 64).
*/}}
{{- define "arena.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "arena.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "arena.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select a component's pods (never change them: selectors are immutable). */}}
{{- define "arena.selectorLabels" -}}
app.kubernetes.io/name: {{ include "arena.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Every object's labels; `.component` may be empty. */}}
{{- define "arena.labels" -}}
helm.sh/chart: {{ include "arena.chart" .root }}
app.kubernetes.io/name: {{ include "arena.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: arena
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "arena.image" -}}
{{- $img := .Values.image -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default .Chart.AppVersion $img.tag | toString) -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the keys: the user's, or the generated one. */}}
{{- define "arena.keysSecret" -}}
{{- if .Values.secrets.existingSecret -}}
{{- .Values.secrets.existingSecret -}}
{{- else -}}
{{- printf "%s-keys" (include "arena.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the PostgreSQL URL. */}}
{{- define "arena.databaseSecret" -}}
{{- default (include "arena.keysSecret" .) .Values.database.existingSecret -}}
{{- end -}}

{{- define "arena.allocatorUrl" -}}
{{- printf "http://%s-allocator:7100" (include "arena.fullname" .) -}}
{{- end -}}

{{/* The pattern every gameserver id (pod name) matches, for server-keys. */}}
{{- define "arena.serverIdPattern" -}}
{{- printf "%s-*" (include "arena.fullname" .) -}}
{{- end -}}

{{/* ARENA_REDIS_URL as an EnvVar. */}}
{{- define "arena.redisEnv" -}}
- name: ARENA_REDIS_URL
{{- if .Values.redis.urlSecretKey }}
  valueFrom:
    secretKeyRef:
      name: {{ include "arena.keysSecret" . }}
      key: {{ .Values.redis.urlSecretKey }}
{{- else }}
  value: {{ .Values.redis.url | quote }}
{{- end }}
- name: ARENA_REDIS_PREFIX
  value: {{ .Values.redis.prefix | quote }}
{{- end -}}

{{/* The pod security context every Arena pod runs with. */}}
{{- define "arena.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The container security context every Arena container runs with. */}}
{{- define "arena.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Soft spread of a Deployment's replicas over nodes and zones. */}}
{{- define "arena.spread" -}}
- maxSkew: 1
  topologyKey: kubernetes.io/hostname
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels:
      {{- include "arena.selectorLabels" . | nindent 6 }}
- maxSkew: 1
  topologyKey: topology.kubernetes.io/zone
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels:
      {{- include "arena.selectorLabels" . | nindent 6 }}
{{- end -}}

{{/*
Checks that the schema cannot express; each fails the render with the field it is about.
Rendered once, from templates/validate.yaml.
*/}}
{{- define "arena.validate" -}}
{{- $v := .Values -}}
{{- if and $v.secrets.existingSecret $v.secrets.generate -}}
{{- fail "secrets: set secrets.existingSecret or secrets.generate: true, not both" -}}
{{- end -}}
{{- if not (or $v.secrets.existingSecret $v.secrets.generate) -}}
{{- fail "secrets: the keys are required: set secrets.existingSecret to the name of your Secret (keys ticket-key, api-keys, operator-api-key, server-keys, gameserver-server-key, operator-server-key; see values.yaml), or secrets.generate: true to let the chart make random ones" -}}
{{- end -}}
{{- if and $v.redis.url $v.redis.urlSecretKey -}}
{{- fail "redis: set redis.url or redis.urlSecretKey, not both" -}}
{{- end -}}
{{- if not (or $v.redis.url $v.redis.urlSecretKey) -}}
{{- fail "redis.url is required: the allocator's registry is shared by its replicas in Redis (redis://host:6379), or set redis.urlSecretKey to read it from the keys Secret" -}}
{{- end -}}
{{- if and $v.redis.urlSecretKey (not $v.secrets.existingSecret) -}}
{{- fail "redis.urlSecretKey reads the keys Secret you made (secrets.existingSecret); with secrets.generate use redis.url" -}}
{{- end -}}
{{- if and $v.database.enabled $v.secrets.generate (not $v.database.existingSecret) -}}
{{- fail "database.existingSecret: name the Secret that holds the PostgreSQL URL (the generated keys Secret has none)" -}}
{{- end -}}
{{- if lt (int $v.gameserver.terminationGracePeriodSeconds) (add (int $v.gameserver.drainTimeoutSecs) 30 | int) -}}
{{- fail (printf "gameserver.terminationGracePeriodSeconds (%v) must be at least gameserver.drainTimeoutSecs + 30 (%v): a gameserver drains, then saves its worlds" $v.gameserver.terminationGracePeriodSeconds (add (int $v.gameserver.drainTimeoutSecs) 30)) -}}
{{- end -}}
{{- $a := $v.allocator.autoscaling -}}
{{- if and $a.enabled (gt (int $a.minReplicas) (int $a.maxReplicas)) -}}
{{- fail (printf "allocator.autoscaling: minReplicas (%v) is above maxReplicas (%v)" $a.minReplicas $a.maxReplicas) -}}
{{- end -}}
{{- $fullname := include "arena.fullname" . -}}
{{- $seen := dict -}}
{{- range $i, $r := $v.regions -}}
{{- if hasKey $seen $r.name -}}
{{- fail (printf "regions[%d].name: region %q is named twice" $i $r.name) -}}
{{- end -}}
{{- $_ := set $seen $r.name true -}}
{{- if gt (int $r.minServers) (int $r.maxServers) -}}
{{- fail (printf "regions[%d] (%s): minServers (%v) is above maxServers (%v)" $i $r.name $r.minServers $r.maxServers) -}}
{{- end -}}
{{- $fleet := printf "%s-%s" $fullname $r.name -}}
{{- if gt (len $fleet) 58 -}}
{{- fail (printf "regions[%d].name: the ArenaFleet name %q is %d characters, at most 58 (its gameserver pods are named `<fleet>-<5 characters>`, and a gameserver id has at most 64): shorten the region name or the release name (fullnameOverride)" $i $fleet (len $fleet)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The regions' names, comma-separated (ARENA_REGIONS). */}}
{{- define "arena.regionNames" -}}
{{- $names := list -}}
{{- range .Values.regions -}}
{{- $names = append $names .name -}}
{{- end -}}
{{- join "," $names -}}
{{- end -}}

{{/*
The gameservers' PodTemplateSpec (ConfigMap `<fullname>-gameserver-pod`, key pod.yaml). The
operator adds per pod: the name (`<fleet>-<5 characters>`), the container's args, the env
ARENA_POD_NAME and ARENA_POD_IP, its ports (ws 7000, http 7001), its readiness and liveness
probes, restartPolicy Never, the labels app.kubernetes.io/component=gameserver,
app.kubernetes.io/managed-by=arena-fleet, arena.dev/fleet, arena.dev/region, arena.dev/version,
and the owner reference. So this template sets none of those.
*/}}
{{- define "arena.gameserverPodTemplate" -}}
{{- $v := .Values.gameserver -}}
{{- $keys := include "arena.keysSecret" . -}}
metadata:
  labels:
    app.kubernetes.io/name: {{ include "arena.name" . }}
    app.kubernetes.io/instance: {{ .Release.Name }}
    app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
    app.kubernetes.io/part-of: arena
    {{- with .Values.commonLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    {{- with $v.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $v.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  serviceAccountName: {{ include "arena.fullname" . }}-gameserver
  automountServiceAccountToken: false
  enableServiceLinks: false
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  # SIGTERM drains: the allocator is told, bots are closed with 1001 and take their seats back
  # elsewhere, worlds are saved.
  terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds }}
  securityContext:
    {{- include "arena.podSecurityContext" . | nindent 4 }}
  {{- with $v.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: gameserver
      image: {{ include "arena.image" . }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      command:
        - /usr/local/bin/arena-gameserver
      # The operator adds ARENA_POD_NAME (the server id) and ARENA_POD_IP (the public WebSocket
      # URL) and replaces any ARENA_POD_* given here.
      env:
        - name: ARENA_TICKET_KEY
          valueFrom:
            secretKeyRef:
              name: {{ $keys }}
              key: ticket-key
        - name: ARENA_TICKET_KEY_PREVIOUS
          valueFrom:
            secretKeyRef:
              name: {{ $keys }}
              key: ticket-key-previous
              optional: true
        # Heartbeats to the allocator.
        - name: ARENA_SERVER_KEY
          valueFrom:
            secretKeyRef:
              name: {{ $keys }}
              key: gameserver-server-key
        {{- if $v.redisSnapshots }}
        {{- include "arena.redisEnv" . | nindent 8 }}
        {{- end }}
        {{- if .Values.database.enabled }}
        - name: ARENA_DATABASE_URL
          valueFrom:
            secretKeyRef:
              name: {{ include "arena.databaseSecret" . }}
              key: {{ .Values.database.secretKey }}
        - name: ARENA_MIGRATE
          value: {{ .Values.database.migrate | quote }}
        {{- end }}
        - name: ARENA_DRAIN_TIMEOUT_SECS
          value: {{ $v.drainTimeoutSecs | quote }}
        - name: ARENA_CPU_TARGET_CORES
          value: {{ $v.cpuTargetCores | quote }}
        - name: ARENA_MACHINE_CPU_TARGET
          value: {{ $v.machineCpuTarget | quote }}
        - name: ARENA_LOG_FORMAT
          value: {{ .Values.logFormat | quote }}
        - name: RUST_LOG
          value: {{ $v.logLevel | quote }}
        {{- with $v.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      resources:
        {{- toYaml $v.resources | nindent 8 }}
      securityContext:
        {{- include "arena.containerSecurityContext" . | nindent 8 }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
  volumes:
    - name: tmp
      emptyDir:
        sizeLimit: 64Mi
{{- end -}}

{{/* NetworkPolicy egress rules every Arena pod needs: DNS (`.` is .Values.networkPolicy). */}}
{{- define "arena.np.dns" -}}
- to:
    - namespaceSelector:
        {{- toYaml .dnsNamespaceSelector | nindent 8 }}
      podSelector:
        {{- toYaml .dnsPodSelector | nindent 8 }}
  ports:
    - protocol: UDP
      port: 53
    - protocol: TCP
      port: 53
{{- end }}

{{/* NetworkPolicy egress to Redis and PostgreSQL. */}}
{{- define "arena.np.storage" -}}
{{- if and .storageCIDRs .storagePorts -}}
- to:
    {{- range .storageCIDRs }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  ports:
    {{- range .storagePorts }}
    - protocol: TCP
      port: {{ . }}
    {{- end }}
{{- end }}
{{- end }}

{{/* NetworkPolicy peer: Prometheus (`.` is .Values.networkPolicy). */}}
{{- define "arena.np.monitoring" -}}
- namespaceSelector:
    {{- toYaml .monitoringNamespaceSelector | nindent 4 }}
  podSelector:
    {{- toYaml .monitoringPodSelector | nindent 4 }}
{{- end }}
