#!/usr/bin/env bash
# Generates the benchmark corpus with ffmpeg: one 5-minute synthetic track encoded at 3 bitrates
# (64k, 128k, 320k AAC) as HLS-TS, HLS-fMP4 and DASH (5 s segments: the 320k TS segments are
# ~200 KB), plus a long-segment HLS rendition (60 s at 320k: ~2 MB segments) and the whole track
# as one progressive download (AAC in MP4 at 140k: ~5 MiB, `download/track.m4a`). The encoded track
# is then copied (real copies, distinct inodes, so page-cache behaviour is honest) into N tracks.
#   benches/corpus.sh DIR small   # 2 tracks  (~140 MB, ~1,100 files)
#   benches/corpus.sh DIR full    # 20 tracks (~1.4 GB, ~11,000 files)
set -euo pipefail
dir=${1:?usage: corpus.sh DIR small|full}
preset=${2:-small}
case "$preset" in small) tracks=2 ;; full) tracks=20 ;; *) echo "preset: small or full" >&2; exit 64 ;; esac
stamp="$dir/.corpus-$preset-v2"
[ -f "$stamp" ] && { echo "corpus: $dir ($preset) already generated"; exit 0; }
command -v ffmpeg >/dev/null || { echo "corpus.sh: ffmpeg not found" >&2; exit 1; }
base="$dir/base"
rm -rf "$dir"; mkdir -p "$base"/{hls,fmp4,dash,hls-long/320k,download}
secs=${SEGD_CORPUS_SECONDS:-300}
# The source is rendered once to WAV with native filters (fast), then encoded four ways.
ffmpeg -hide_banner -loglevel error -y -f lavfi -i "sine=f=220:sample_rate=48000:d=$secs" -f lavfi -i "sine=f=331:sample_rate=48000:d=$secs" \
  -f lavfi -i "anoisesrc=color=pink:amplitude=0.05:sample_rate=48000:d=$secs" \
  -filter_complex "[0:a][1:a][2:a]amix=inputs=3,aformat=channel_layouts=stereo" "$dir/source.wav"
src="$dir/source.wav"
split="[0:a]aformat=channel_layouts=stereo,asplit=3[a][b][c]"
enc=(-map "[a]" -map "[b]" -map "[c]" -c:a aac -b:a:0 64k -b:a:1 128k -b:a:2 320k)
vsm="a:0,name:64k a:1,name:128k a:2,name:320k"
q=(-hide_banner -loglevel error -y)
echo "corpus: encoding the base track (HLS-TS, HLS-fMP4, DASH, long segments)"
ffmpeg "${q[@]}" -i "$src" -filter_complex "$split" "${enc[@]}" -f hls -hls_time 5 -hls_playlist_type vod \
  -hls_segment_filename "$base/hls/%v/seg_%05d.ts" -master_pl_name master.m3u8 -var_stream_map "$vsm" "$base/hls/%v/index.m3u8"
ffmpeg "${q[@]}" -i "$src" -filter_complex "$split" "${enc[@]}" -f hls -hls_time 5 -hls_playlist_type vod \
  -hls_segment_type fmp4 -hls_fmp4_init_filename init.mp4 -hls_segment_filename "$base/fmp4/%v/seg_%05d.m4s" \
  -master_pl_name master.m3u8 -var_stream_map "$vsm" "$base/fmp4/%v/index.m3u8"
( cd "$base/dash" && ffmpeg "${q[@]}" -i "$src" -filter_complex "$split" "${enc[@]}" -f dash -seg_duration 5 \
  -use_template 1 -use_timeline 0 -init_seg_name 'init-$RepresentationID$.m4s' \
  -media_seg_name 'chunk-$RepresentationID$-$Number%05d$.m4s' -adaptation_sets "id=0,streams=a" manifest.mpd )
ffmpeg "${q[@]}" -i "$src" -map 0:a -c:a aac -b:a 320k -f hls -hls_time 60 -hls_playlist_type vod \
  -hls_segment_filename "$base/hls-long/320k/seg_%05d.ts" "$base/hls-long/320k/index.m3u8"
ffmpeg "${q[@]}" -i "$src" -map 0:a -c:a aac -b:a 140k -movflags +faststart "$base/download/track.m4a"
mkdir -p "$dir/root/vod"
for i in $(seq -w 1 "$tracks"); do
  cp -r "$base" "$dir/root/vod/mix$i"
done
rm -rf "$base" "$dir/source.wav"
touch "$stamp"
echo "corpus: $(find "$dir/root" -type f | wc -l) files, $(du -sh "$dir/root" | cut -f1)"
