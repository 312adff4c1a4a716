#!/bin/sh
# The seed's curl session, image or video ($1), as a person runs it: the seed's
# own commands send the file and ask for the results with the uuid they
# answered, until "finished"; then each files[].url is fetched under the name
# the server gives it. tests/test_clients.py changes only the domain, scheme
# and key; run it in a folder holding image.jpeg or video.mp4.
set -eu

if [ "$1" = image ]; then
answer=$(curl -F "lang=en" -F "convert_to=image-backgroundremover" -F "files=@image.jpeg" -H "Authorization: YOUR_API_KEY" https://api.backgroundremoverai.com/v1/convert/)
else
answer=$(curl -F "lang=en" -F "convert_to=video-backgroundremover" \
     -F "files=@video.mp4" \
     -H "Authorization: YOUR_API_KEY" https://api.backgroundremoverai.com/v1/convert/)
fi
echo "$answer"
conversion_uuid=$(echo "$answer" | sed -n 's/.*"uuid": *"\([^"]*\)".*/\1/p')
[ -n "$conversion_uuid" ] || exit 1

while :; do
  results=$(curl -F "uuid=$conversion_uuid" https://api.backgroundremoverai.com/v1/results/)
  echo "$results" | grep -q '"finished": *true' && break
  sleep 1
done
echo "$results"

echo "$results" | grep -o '"url": *"[^"]*"' | sed 's/.*"\([^"]*\)"$/\1/' | while read -r url; do
  curl -sS -O -J https://api.backgroundremoverai.com"$url"
done
