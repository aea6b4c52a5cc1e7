# Driver for bunny (Debian ruby-bunny). Usage: ruby driver.rb SCENARIO URL < script.json
# Same protocol as the other drivers (see ../PROTOCOL.md).
require 'bunny'
require 'json'
require 'digest'
require 'bigdecimal'
require 'logger'

# amq-protocol 2.3.2 has no byte-array type, and encodes a BigDecimal wrongly (12.345 goes out
# as 12): both are reported as unsendable rather than as broker failures.
UNSUPPORTED = %w[bytes decimal].freeze

PROPS = %w[content_type content_encoding delivery_mode priority correlation_id reply_to expiration
           message_id timestamp type user_id app_id].freeze

class Unsupported < StandardError; end

def make_body(spec)
  return (0...spec['size']).map { |i| i % 251 }.pack('C*') if spec.is_a?(Hash)
  (spec || '').dup.force_encoding('BINARY')
end

def describe_body(body)
  body = (body || '').b
  if body.bytesize <= 200
    text = body.dup.force_encoding('UTF-8')
    return text if text.valid_encoding?
  end
  { 'len' => body.bytesize, 'sha256' => Digest::SHA256.hexdigest(body) }
end

def typed(type, value) = { 'type' => type, 'value' => value }

def to_native(v)
  value = v['value']
  case v['type']
  when 'float' then value.to_f
  when 'decimal' then BigDecimal(value)
  when 'timestamp' then Time.at(value).utc
  when 'void' then nil
  when 'table' then value.transform_values { |x| to_native(x) }
  when 'array' then value.map { |x| to_native(x) }
  else value
  end
end

def from_native(v)
  case v
  when nil then typed('void', nil)
  when true, false then typed('bool', v)
  when Integer then typed('int', v)
  when Float then typed('float', v)
  when BigDecimal then typed('decimal', v.to_s('F'))
  when Time then typed('timestamp', v.to_i)
  when Hash then typed('table', v.transform_values { |x| from_native(x) })
  when Array then typed('array', v.map { |x| from_native(x) })
  when String
    # amq-protocol returns a byte array ('x') as a binary String; text is valid UTF-8.
    utf8 = v.dup.force_encoding('UTF-8')
    utf8.valid_encoding? ? typed('str', utf8) : typed('bytes', v.unpack1('H*'))
  else typed('str', v.to_s)
  end
end

def received(info, props, body)
  p = {}
  props = props.to_h.transform_keys(&:to_s) # basic.get gives a Hash, deliveries a MessageProperties
  PROPS.each do |k|
    val = props[k]
    val = val.to_i if k == 'timestamp' && val
    p[k] = val unless val.nil?
  end
  headers = (props['headers'] || {}).transform_values { |x| from_native(x) }
  { 'body' => describe_body(body), 'props' => p, 'headers' => headers,
    'redelivered' => !!info.redelivered, 'exchange' => info.exchange.to_s, 'routing_key' => info.routing_key.to_s }
end

def error_code(err)
  case err
  when Bunny::AuthenticationFailureError, Bunny::PossibleAuthenticationFailureError then 403
  when Bunny::ChannelLevelException then err.channel_close.reply_code
  when Bunny::ConnectionLevelException
    err.connection_close&.reply_code || (err.is_a?(Bunny::NotAllowedError) ? 530 : 'closed')
  when Bunny::ChannelAlreadyClosed
    last = err.channel&.instance_variable_get(:@last_channel_error)
    last.respond_to?(:channel_close) ? last.channel_close.reply_code : 'closed'
  when Timeout::Error then 'timeout'
  else
    m = err.message.match(/\b([345]\d\d)\b/)
    m ? m[1].to_i : 'closed'
  end
end

def wait_for(seconds)
  deadline = Time.now + seconds
  sleep 0.02 until yield || Time.now > deadline
end

class Driver
  def initialize(url)
    @url = url
    @conns = {}
    @chans = {}
    @consumers = {}
    @returned = []
    @lock = Mutex.new
  end

  def ch(step) = @chans[step.fetch('ch', 'ch')]

  # Bunny hands a basic.return to the exchange object the message was published through.
  def exchange(step)
    c = ch(step)
    name = step['exchange']
    return c.default_exchange.tap { |x| watch_returns(x) } if name == ''
    x = c.find_exchange(name) || Bunny::Exchange.new(c, :direct, name, no_declare: true)
    watch_returns(x)
  end

  def watch_returns(x)
    x.on_return do |info, _props, body|
      @lock.synchronize do
        @returned << { 'reply_code' => info.reply_code, 'exchange' => info.exchange,
                       'routing_key' => info.routing_key, 'body' => describe_body(body) }
      end
    end
    x
  end

  def op_connect(step)
    opts = { connection_timeout: 15, automatically_recover: false, logger: Logger.new(nil) }
    opts[:heartbeat] = step['heartbeat'] if step.key?('heartbeat')
    url = step['url'] || @url
    # The AMQP URI spec reads a bare "/" path as the empty vhost; the suite means "/".
    opts[:vhost] = '/' if URI(url).path == '/'
    deadline = Time.now + (step['retry_for'] || 0)
    begin
      conn = Bunny.new(url, **opts)
      conn.start
      @conns[step.fetch('conn', 'c')] = conn
    rescue Bunny::TCPConnectionFailed, Bunny::TCPConnectionFailedForAllHosts, Errno::ECONNREFUSED
      raise if Time.now > deadline
      sleep 0.5
      retry
    end
    nil
  end

  def op_close(step) = @conns[step.fetch('conn', 'c')].close && nil

  def op_channel(step)
    @chans[step.fetch('ch', 'ch')] = @conns[step.fetch('conn', 'c')].create_channel
    nil
  end

  def op_exchange_declare(step)
    ch(step).exchange_declare(step['exchange'], step['type'] || 'direct', passive: !!step['passive'],
                              durable: !!step['durable'], auto_delete: !!step['auto_delete'])
    nil
  end

  def op_exchange_delete(step) = ch(step).exchange_delete(step['exchange']) && nil

  def op_queue_declare(step)
    ok = ch(step).queue_declare(step['queue'], passive: !!step['passive'], durable: !!step['durable'],
                                exclusive: !!step['exclusive'], auto_delete: !!step['auto_delete'],
                                arguments: step['args'] || {})
    { 'messages' => ok.message_count, 'consumers' => ok.consumer_count }
  end

  def op_queue_bind(step)
    ch(step).queue_bind(step['queue'], step['exchange'], routing_key: step['routing_key'] || '',
                        arguments: step['args'] || {})
    nil
  end

  def op_queue_delete(step) = ch(step).queue_delete(step['queue']) && nil
  def op_qos(step) = ch(step).basic_qos(step['prefetch']) && nil
  def op_confirm(step) = ch(step).confirm_select && nil

  def op_publish(step)
    opts = { routing_key: step['routing_key'], mandatory: !!step['mandatory'] }
    unsent = []
    (step['props'] || {}).each do |k, v|
      if k == 'headers'
        unsent = v.select { |_, x| UNSUPPORTED.include?(x['type']) }.keys.sort
        opts[:headers] = v.reject { |h, _| unsent.include?(h) }.transform_values { |x| to_native(x) }
      else
        opts[k.to_sym] = v
      end
    end
    exchange(step).publish(make_body(step['body']), opts)
    unsent.empty? ? 'ok' : { 'unsent' => unsent }
  end

  def op_wait_confirms(step) = ch(step).wait_for_confirms ? 'ok' : 'nacked'

  def op_returns(step)
    wait_for(step['timeout'] || 5) { @lock.synchronize { @returned.size >= step['count'] } }
    sleep(step['settle'] || 0)
    @lock.synchronize { @returned.dup }
  end

  def op_get(step)
    c = ch(step)
    ack = step['ack'] || 'ack'
    deadline = Time.now + (step['wait'] || 0)
    loop do
      info, props, body = c.basic_get(step['queue'], manual_ack: ack != 'noack')
      if info
        case ack
        when 'ack' then c.ack(info.delivery_tag)
        when 'reject' then c.reject(info.delivery_tag, false)
        when 'nack' then c.nack(info.delivery_tag, false, false)
        end
        return received(info, props, body)
      end
      return 'empty' if Time.now > deadline
      sleep 0.05
    end
  end

  def op_get_all(step)
    out = []
    while (m = op_get(step.merge('wait' => 0))) != 'empty'
      out << m['body']
    end
    out
  end

  def op_consume(step)
    c = ch(step)
    log = { ch: c, msgs: [], next: 0, cancelled: false }
    consumer = Bunny::Consumer.new(c, step['queue'], step['tag'], !!step['no_ack'])
    consumer.on_delivery { |info, _props, body| @lock.synchronize { log[:msgs] << [info.delivery_tag, body] } }
    consumer.on_cancellation { log[:cancelled] = true } # the broker's basic.cancel
    c.basic_consume_with(consumer)
    log[:consumer] = consumer
    @consumers[step['tag']] = log
    nil
  end

  def op_deliveries(step)
    log = @consumers[step['tag']]
    wait_for(step['timeout'] || 5) { @lock.synchronize { log[:msgs].size >= step['count'] } }
    sleep(step['settle'] || 0)
    @lock.synchronize { log[:msgs].map { |_, body| describe_body(body) } }
  end

  def op_ack(step)
    log = @consumers[step['tag']]
    tag = @lock.synchronize { log[:msgs][log[:next]].first }
    log[:next] += 1
    log[:ch].ack(tag)
    nil
  end

  def op_cancel(step) = @consumers[step['tag']][:consumer].cancel && nil

  def op_cancelled(step)
    log = @consumers[step['tag']]
    wait_for(step['timeout'] || 5) { log[:cancelled] }
    log[:cancelled]
  end

  def op_sleep(step) = sleep(step['seconds']) && nil # bunny's heartbeat sender keeps running

  def op_sync(step) = ch(step).exchange_declare('amq.direct', 'direct', passive: true) && nil
end

def main
  scenario, url = ARGV
  steps = JSON.parse($stdin.read)['steps']
  driver = Driver.new(url)
  observed = {}
  steps.each_with_index do |step, i|
    meth = "op_#{step['op']}"
    $stderr.puts "interop-step #{i} #{step['op']}" # names the step if we time out
    $stderr.flush
    begin
      raise Unsupported, step['op'] unless driver.respond_to?(meth)
      result = driver.public_send(meth, step)
      observed[step['save']] = result.nil? ? 'ok' : result if step.key?('save')
    rescue Unsupported
      observed['_unsupported'] = "#{step['op']} not supported by this client"
      break
    rescue StandardError, Timeout::Error => e
      err = { 'error' => error_code(e), 'detail' => "#{e.class}: #{e.message}"[0, 300] }
      if step.key?('save')
        observed[step['save']] = err
      else
        observed['_abort'] = err.merge('step' => i, 'op' => step['op'])
        break
      end
    end
  end
  $stdout.puts JSON.generate({ 'scenario' => scenario, 'observed' => observed })
  $stdout.flush
  exit!(0) # skip bunny's thread shutdown
end

main
